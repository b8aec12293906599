//! The batch transaction's statements. Each is prepared once per connection and may run on a
//! generic plan that Postgres made when the tables were small and keeps for the connection's
//! life, so each reaches its rows by key whatever that plan thinks of the table sizes: on its
//! own ([`READ_FINAL`]), or because the worker's connections run with `enable_seqscan=off`
//! ([`LOCK_PAYMENTS`], [`UPDATE_PAYMENTS`]; see `crate::store::db`). `worker/tests/database.rs` checks
//! every plan made on empty tables, both ways.

/// The trainer is looked up per payment (a subquery served by the bookings key), not joined:
/// a cached generic plan of the join, planned while `bookings` was small, scans all of it for
/// every batch once it is not (see [`READ_FINAL`]). The payments themselves are found through
/// their keys only with `enable_seqscan=off`: a generic plan of `= ANY` over an array it
/// cannot see reads a never-vacuumed `payments` in full otherwise.
pub const LOCK_PAYMENTS: &str = "
    SELECT p.id, p.order_id, p.payment_status, p.booking_id,
           (SELECT b.trainer_id FROM bookings b WHERE b.id = p.booking_id) AS trainer_id,
           p.provider, p.amount, p.currency, p.deposit_secret, p.provider_payment_id, p.last_event_at
      FROM payments p
     WHERE p.order_id = ANY($1::text[]) OR p.provider_payment_id = ANY($2::text[])
     ORDER BY p.id
       FOR UPDATE OF p";

/// Statements are prepared once per connection, and after five runs Postgres may keep one
/// generic plan for good, planned from the table sizes of that moment. A plain join of the
/// batch's keys with the inbox then stays a hash join over the whole table once the inbox has
/// grown (seen: 5 ms per batch and rising). Each key is therefore looked up on its own through
/// the unique index: the `OFFSET 0` keeps the subquery from being flattened into such a join.
pub const READ_FINAL: &str = "
    SELECT k.provider, k.event_key
      FROM unnest($1::text[], $2::text[]) AS k(provider, event_key)
     CROSS JOIN LATERAL (
           SELECT 1 FROM webhook_events w
            WHERE w.provider = k.provider AND w.event_key = k.event_key
              AND w.status IN ('applied', 'ignored')
           OFFSET 0) AS w";

/// `p.id = ANY($1)` repeats the join condition as an index condition on the primary key. A
/// generic plan reads the rows by key (through it, or a lookup per row) only with
/// `enable_seqscan=off`: made on an empty `payments` without that setting, it scans the table,
/// like [`LOCK_PAYMENTS`]. `last_event_at` was decided against the locked row; `GREATEST`
/// (which skips NULLs) only makes sure it never moves back.
pub const UPDATE_PAYMENTS: &str = "
    UPDATE payments p SET
           payment_status = u.status,
           paid_at = CASE WHEN u.paid THEN COALESCE(p.paid_at, now()) ELSE p.paid_at END,
           updated_at = now(),
           payment_metadata = jsonb_set(COALESCE(p.payment_metadata, '{}'::jsonb), '{webhook}', u.metadata::jsonb),
           provider = COALESCE(p.provider, u.provider),
           provider_payment_id = COALESCE(p.provider_payment_id, u.provider_payment_id),
           deposit_secret = COALESCE(p.deposit_secret, u.deposit_secret),
           last_event_at = GREATEST(p.last_event_at, u.last_event_at)
      FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[], $7::text[],
                  $8::timestamptz[])
           AS u(id, status, paid, metadata, provider, provider_payment_id, deposit_secret, last_event_at)
     WHERE p.id = u.id AND p.id = ANY($1::uuid[])";

pub const INSERT_NOTIFICATIONS: &str = "
    INSERT INTO notifications (id, user_id, title, message, type, link, payment_id, payload_sha256)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[],
                         $8::bytea[])";

/// The committing worker owns the rows for the lease, under its claim token (`$6`), and
/// publishes them right after the commit (its first attempt); the relay of any worker takes over
/// once the lease ran out. The lease starts at `clock_timestamp()`, when the rows are written,
/// not at `now()`, the start of a transaction that may have waited long on payment locks before
/// it got here and would hand out a lease already partly spent.
pub const INSERT_OUTBOX: &str = "
    INSERT INTO outbox (notification_id, routing_key, payload, traceparent, claimed_until, claim_token)
    SELECT o.id, o.routing_key, o.payload, o.traceparent, clock_timestamp() + make_interval(secs => $5::float8),
           $6::uuid
      FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS o(id, routing_key, payload, traceparent)";

/// Every event's inbox row. A row that is already final (applied or ignored) keeps what it
/// says and only counts the duplicate; any other row takes the new status.
pub const UPSERT_INBOX: &str = "
    INSERT INTO webhook_events AS w (provider, event_key, event_type, order_id, status, detail, attempts,
                                     duplicates, last_error, verification, payload, request_id, received_at,
                                     processed_at)
    SELECT r.provider, r.event_key, r.event_type, r.order_id, r.status, r.detail, r.attempts, r.duplicates,
           r.last_error, r.verification, r.payload, r.request_id, r.received_at,
           CASE WHEN r.status = 'retrying' THEN NULL ELSE now() END
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[],
                  $8::int4[], $9::text[], $10::text[], $11::text[], $12::text[], $13::timestamptz[])
           AS r(provider, event_key, event_type, order_id, status, detail, attempts, duplicates, last_error,
                verification, payload, request_id, received_at)
     ORDER BY r.provider, r.event_key
    ON CONFLICT (provider, event_key) DO UPDATE SET
           duplicates = w.duplicates + EXCLUDED.duplicates
                        + CASE WHEN w.status IN ('applied', 'ignored') THEN 1 ELSE 0 END,
           status = CASE WHEN w.status IN ('applied', 'ignored') THEN w.status ELSE EXCLUDED.status END,
           detail = CASE WHEN w.status IN ('applied', 'ignored') THEN w.detail
                         ELSE COALESCE(EXCLUDED.detail, w.detail) END,
           attempts = CASE WHEN w.status IN ('applied', 'ignored') THEN w.attempts
                           ELSE GREATEST(w.attempts, EXCLUDED.attempts) END,
           last_error = CASE WHEN w.status IN ('applied', 'ignored') THEN w.last_error ELSE EXCLUDED.last_error END,
           verification = CASE WHEN w.status IN ('applied', 'ignored') THEN w.verification
                               ELSE COALESCE(EXCLUDED.verification, w.verification) END,
           order_id = CASE WHEN w.status IN ('applied', 'ignored') THEN w.order_id
                           ELSE COALESCE(EXCLUDED.order_id, w.order_id) END,
           processed_at = CASE WHEN w.status IN ('applied', 'ignored') THEN w.processed_at
                               ELSE EXCLUDED.processed_at END,
           updated_at = now()
    RETURNING w.provider, w.event_key, w.status";
