//! Payment statuses, exactly as stored in `payments.payment_status`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    pub const ALL: [PaymentStatus; 7] = [
        Self::Pending,
        Self::WaitingForDeposit,
        Self::Paid,
        Self::Failed,
        Self::Expired,
        Self::Canceled,
        Self::PartiallyCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::WaitingForDeposit => "waiting_for_deposit",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
            Self::PartiallyCanceled => "partially_canceled",
        }
    }
}

impl std::fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PaymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| format!("unknown payment status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
        }
        assert!("PAID".parse::<PaymentStatus>().is_err());
    }
}
