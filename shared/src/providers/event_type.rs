//! The event types the pipeline knows by name, one enum per provider. Their names are the
//! providers' own, the same in the envelope, the inbox (`webhook_events.event_type`), routing
//! keys and metric labels. Anything else is [`EventType::Other`]: an unsigned Toss body can
//! name any type, so labels stay bounded.

use strum::{EnumString, IntoEnumIterator, IntoStaticStr};

use super::Provider;

/// Stripe event types the pipeline applies to payments (`hookctl send stripe` builds each).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    EnumString,
    IntoStaticStr,
    strum::EnumIter,
    strum::VariantArray,
)]
pub enum StripeEventType {
    #[strum(serialize = "checkout.session.completed")]
    CheckoutSessionCompleted,
    #[strum(serialize = "checkout.session.async_payment_succeeded")]
    CheckoutSessionAsyncPaymentSucceeded,
    #[strum(serialize = "checkout.session.async_payment_failed")]
    CheckoutSessionAsyncPaymentFailed,
    #[strum(serialize = "checkout.session.expired")]
    CheckoutSessionExpired,
    #[strum(serialize = "payment_intent.payment_failed")]
    PaymentIntentPaymentFailed,
}

/// Toss event types the pipeline knows.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    EnumString,
    IntoStaticStr,
    strum::EnumIter,
    strum::VariantArray,
)]
pub enum TossEventType {
    /// A payment's status changed (unsigned: verified by fetch-back).
    #[strum(serialize = "PAYMENT_STATUS_CHANGED")]
    PaymentStatusChanged,
    /// A virtual account was paid (or its deposit cancelled); carries the payment's `secret`.
    #[strum(serialize = "DEPOSIT_CALLBACK")]
    DepositCallback,
    #[strum(serialize = "CANCEL_STATUS_CHANGED")]
    CancelStatusChanged,
    /// Signed by Toss, carries `eventId`.
    #[strum(serialize = "payout.changed")]
    PayoutChanged,
    /// Signed by Toss, carries `eventId`.
    #[strum(serialize = "seller.changed")]
    SellerChanged,
}

impl TossEventType {
    /// Toss signs these; for them a valid signature is required.
    pub fn is_signed(self) -> bool {
        matches!(self, Self::PayoutChanged | Self::SellerChanged)
    }
}

/// An event type as the pipeline names it: one it knows, or any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Stripe(StripeEventType),
    Toss(TossEventType),
    /// A type the pipeline does not know (recorded, not applied), `other` in metric labels.
    Other,
}

/// The metric label of every event type the pipeline does not know.
pub const OTHER: &str = "other";

impl EventType {
    /// The known type of `provider` named `name`, else [`EventType::Other`].
    pub fn of(provider: Provider, name: &str) -> Self {
        match provider {
            Provider::Stripe => name.parse().map_or(Self::Other, Self::Stripe),
            Provider::Toss => name.parse().map_or(Self::Other, Self::Toss),
        }
    }

    /// The name kept in metric labels: the type's own, or `other`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stripe(t) => t.into(),
            Self::Toss(t) => t.into(),
            Self::Other => OTHER,
        }
    }

    /// Every label a provider's events are counted under: its known types, then `other`.
    pub fn labels(provider: Provider) -> Vec<&'static str> {
        let known: Vec<&'static str> = match provider {
            Provider::Stripe => StripeEventType::iter().map(<&'static str>::from).collect(),
            Provider::Toss => TossEventType::iter().map(<&'static str>::from).collect(),
        };
        known.into_iter().chain([OTHER]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_providers_own_and_parse_back() {
        for t in StripeEventType::iter() {
            assert_eq!(t.to_string().parse::<StripeEventType>(), Ok(t));
            assert_eq!(EventType::of(Provider::Stripe, &t.to_string()), EventType::Stripe(t));
        }
        for t in TossEventType::iter() {
            assert_eq!(EventType::of(Provider::Toss, &t.to_string()), EventType::Toss(t));
        }
        assert_eq!(StripeEventType::CheckoutSessionCompleted.to_string(), "checkout.session.completed");
        assert_eq!(TossEventType::PaymentStatusChanged.to_string(), "PAYMENT_STATUS_CHANGED");
        assert_eq!(EventType::of(Provider::Toss, "something.new").label(), "other");
        assert_eq!(EventType::of(Provider::Stripe, "customer.created").label(), "other");
    }

    #[test]
    fn only_payout_and_seller_changes_are_signed() {
        let signed: Vec<&str> = TossEventType::iter().filter(|t| t.is_signed()).map(<&str>::from).collect();
        assert_eq!(signed, ["payout.changed", "seller.changed"]);
    }
}
