//! `hookctl send`: realistic, correctly signed events posted to a running ingest.

use clap::{Args, Subcommand};
use secrecy::ExposeSecret;
use shared::providers::{StripeEventType, TossEventType};
use shared::samples;
use shared::settings::HookctlSettings;
use shared::verify::stripe::sign_stripe_payload;
use strum::IntoEnumIterator;

#[derive(Subcommand, Debug)]
pub enum SendCommand {
    /// A Stripe event signed with the first STRIPE_WEBHOOK_SECRET, as Stripe signs it.
    Stripe(StripeArgs),
    /// A Toss event (PAYMENT_STATUS_CHANGED, or DEPOSIT_CALLBACK with --deposit-secret).
    Toss(TossArgs),
}

#[derive(Args, Debug)]
pub struct Target {
    /// Ingest's base URL.
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
}

#[derive(Args, Debug)]
pub struct StripeArgs {
    /// checkout.session.completed, checkout.session.async_payment_succeeded,
    /// checkout.session.async_payment_failed, checkout.session.expired, payment_intent.payment_failed
    #[arg(value_parser = stripe_event_type)]
    pub event_type: StripeEventType,
    /// The app's order id (client_reference_id and metadata.order_id).
    #[arg(long)]
    pub order: String,
    /// Amount in minor units (cents).
    #[arg(long, default_value_t = 3000)]
    pub amount: i64,
    #[arg(long, default_value = "usd")]
    pub currency: String,
    /// The session's payment_status for checkout.session.completed (paid, unpaid, no_payment_required).
    #[arg(long, default_value = "paid")]
    pub payment_status: String,
    /// Event id; a fresh one by default. Reuse one to see deduplication.
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct TossArgs {
    /// DONE, WAITING_FOR_DEPOSIT, CANCELED, PARTIAL_CANCELED, ABORTED, EXPIRED, ...
    pub status: String,
    #[arg(long)]
    pub order: String,
    /// totalAmount.
    #[arg(long, default_value_t = 10000)]
    pub amount: i64,
    #[arg(long)]
    pub payment_key: Option<String>,
    /// Send a flat DEPOSIT_CALLBACK carrying this secret instead of PAYMENT_STATUS_CHANGED.
    #[arg(long)]
    pub deposit_secret: Option<String>,
    /// Send the original guide's flat test body `{eventType, orderId, status}`.
    #[arg(long, conflicts_with = "deposit_secret")]
    pub flat: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A Stripe event type the pipeline handles, or an error that lists them.
fn stripe_event_type(name: &str) -> Result<StripeEventType, String> {
    name.parse().map_err(|_| {
        let known: Vec<&str> = StripeEventType::iter().map(<&str>::from).collect();
        format!("unsupported Stripe event type {name:?}; use one of {}", known.join(", "))
    })
}

pub async fn run(settings: &HookctlSettings, command: SendCommand) -> anyhow::Result<()> {
    let (url, body, headers) = match command {
        SendCommand::Stripe(args) => {
            let event_id = args.event_id.unwrap_or_else(|| format!("evt_cli_{}", uuid::Uuid::new_v4().simple()));
            let event_type = args.event_type.to_string();
            let body = if args.event_type == StripeEventType::PaymentIntentPaymentFailed {
                samples::stripe_payment_failed(&event_id, &args.order, args.amount, &args.currency)
            } else {
                samples::stripe_session_event(
                    &event_id,
                    &event_type,
                    &args.order,
                    &args.payment_status,
                    args.amount,
                    &args.currency,
                )
            };
            let secrets = settings.secrets.stripe_secrets()?;
            let signature = sign_stripe_payload(&body, secrets[0].expose_secret(), chrono::Utc::now().timestamp());
            println!("event {event_id} ({}) for order {}", args.event_type, args.order);
            (
                format!("{}/api/webhooks/stripe", args.target.url.trim_end_matches('/')),
                body,
                vec![("stripe-signature".to_string(), signature)],
            )
        }
        SendCommand::Toss(args) => {
            let body = match (&args.deposit_secret, args.flat) {
                (Some(secret), _) => samples::toss_deposit_callback(&args.order, &args.status, secret),
                (None, true) => serde_json::to_vec(&serde_json::json!({
                    "eventType": TossEventType::PaymentStatusChanged.to_string(), "orderId": args.order, "status": args.status
                }))?,
                (None, false) => {
                    let key = args
                        .payment_key
                        .clone()
                        .unwrap_or_else(|| format!("tviva_cli_{}", uuid::Uuid::new_v4().simple()));
                    samples::toss_payment_status_changed(&args.order, &key, &args.status, args.amount)
                }
            };
            let headers = samples::toss_delivery_headers(&body, None);
            println!("Toss {} for order {}", args.status, args.order);
            (format!("{}/api/webhooks/toss", args.target.url.trim_end_matches('/')), body, headers)
        }
    };
    let mut request = reqwest::Client::new().post(&url).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| anyhow::anyhow!("cannot reach ingest at {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), text);
    anyhow::ensure!(status.is_success(), "ingest did not accept the event");
    Ok(())
}
