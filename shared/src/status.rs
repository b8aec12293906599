//! Payment statuses, exactly as stored in `payments.payment_status`.

use serde::{Deserialize, Serialize};

/// The same names in JSON, in SQL and in notification types (`payment.<status>`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case", parse_err_ty = String, parse_err_fn = unknown_status)]
pub enum PaymentStatus {
    Pending,
    WaitingForDeposit,
    Paid,
    Failed,
    Expired,
    Canceled,
    PartiallyCanceled,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("unknown payment status {s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn names_round_trip() {
        for status in PaymentStatus::iter() {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""), "serde and SQL say the same");
        }
        let names: Vec<&str> = PaymentStatus::iter().map(PaymentStatus::as_str).collect();
        assert_eq!(
            names,
            ["pending", "waiting_for_deposit", "paid", "failed", "expired", "canceled", "partially_canceled"],
            "the names in payments.payment_status"
        );
        assert!("PAID".parse::<PaymentStatus>().is_err());
    }
}
