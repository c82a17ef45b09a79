//! Requests carry Standard Webhooks signatures that a receiver verifies with the
//! `standard-webhooks` crate.

mod common;

use std::sync::atomic::Ordering;

use common::{run_generator, FakeOptions, FakeWebhook};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn whsec_key() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap()
}

async fn signing_fake(key: Vec<u8>) -> FakeWebhook {
    FakeWebhook::start(FakeOptions {
        secret_key: Some(key),
        ..FakeOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_of_every_scenario_is_signed_with_a_whsec_secret() {
    let fake = signing_fake(whsec_key()).await;
    let run = run_generator(&["--url", &fake.url, "--secret", WHSEC], &[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let posts = fake.observed.posts.load(Ordering::Relaxed);
    assert!(posts > 70, "{posts} posts");
    assert_eq!(
        fake.observed.signatures_verified.load(Ordering::Relaxed),
        posts
    );
    assert_eq!(fake.observed.signatures_rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_secret_is_used_as_the_key_bytes() {
    let fake = signing_fake(b"plain-shared-secret".to_vec()).await;
    let run = run_generator(
        &[
            "basic",
            "--url",
            &fake.url,
            "--secret",
            "plain-shared-secret",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(fake.observed.signatures_verified.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_webhook_secret_signs_by_default() {
    let fake = signing_fake(whsec_key()).await;
    let run = run_generator(
        &["batch", "--url", &fake.url],
        &[("DAY15_WEBHOOK_SECRET", WHSEC)],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(fake.observed.signatures_verified.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_the_scenario_fails() {
    let fake = signing_fake(whsec_key()).await;
    let run = run_generator(&["basic", "--url", &fake.url, "--secret", "wrong"], &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("observed: 3× 401"), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_load_is_verified_too() {
    let fake = signing_fake(whsec_key()).await;
    let run = run_generator(
        &[
            "load",
            "--url",
            &fake.url,
            "--secret",
            WHSEC,
            "--rate",
            "0",
            "--events",
            "40",
            "--concurrency",
            "4",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.json()["events_accepted"], 40);
    assert_eq!(
        fake.observed.signatures_verified.load(Ordering::Relaxed),
        40
    );
}
