//! Issue 12: a session's keepalives never wait behind its other work. Real etcd, the
//! agent's own session, `hidsctl` pushing a document whose settings are in a blob.

use std::sync::Arc;
use std::time::Duration;

use hids_control::session::{Session, SessionConfig, Update};
use hids_control::{EtcdConfig, Keys, TrustedKeys};
use hids_test_support::{write_file, Etcd, KeyPair};
use tokio::sync::{mpsc, watch, Semaphore};

const SLOTS: u32 = 4;

/// Takes every update the session sends, keeping the ones that matter here.
async fn next_update(rx: &mut mpsc::Receiver<Update>, within: Duration) -> Option<Update> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[test]
fn issue12_keepalives_flow_while_a_blob_read_is_held_up() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let trusted = TrustedKeys::load(&[key.public()]).unwrap();
        let slots = Arc::new(Semaphore::new(SLOTS as usize));
        // A 3 s lease: keepalives every second; without them it is gone within 3 s.
        let session = Session::new(
            SessionConfig {
                etcd: EtcdConfig {
                    endpoints: vec![etcd.url()],
                    ..EtcdConfig::default()
                },
                keys: Keys::default(),
                host_id: "ka-1".into(),
                lease_ttl: Duration::from_secs(3),
                status_refresh: Duration::from_secs(300),
                status_min_gap: Duration::from_millis(500),
            },
            trusted,
            0,
        )
        .with_rpc_slots(slots.clone());
        let (_status_tx, status_rx) = watch::channel(br#"{"host_id":"ka-1"}"#.to_vec());
        let (updates_tx, mut updates) = mpsc::channel(16);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let running = tokio::spawn(session.run(status_rx, updates_tx, shutdown_rx));
        assert!(matches!(
            next_update(&mut updates, Duration::from_secs(10)).await,
            Some(Update::Connected)
        ));

        // Every rpc slot taken: the blob read waits for one, as it waits out retries
        // behind an overloaded etcd. Keepalives take no slot.
        let held = slots.clone().acquire_many_owned(SLOTS).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let long_args: Vec<String> = (0..40).map(|i| format!("--option-{i:02}")).collect();
        let file = write_file(
            dir.path(),
            "desired.toml",
            &format!("[[plugins]]\nname = \"process\"\nargs = {long_args:?}\n"),
        );
        let secret = key.secret();
        let push = tokio::task::spawn_blocking({
            let url = etcd.url();
            move || {
                std::process::Command::new(hids_test_support::bin("hidsctl"))
                    .args([
                        "--endpoints",
                        &url,
                        "push",
                        "--key",
                        &secret,
                        "--file",
                        &file,
                    ])
                    .args(["--hosts", "ka-1"])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            push.status.success(),
            "{}",
            String::from_utf8_lossy(&push.stderr)
        );
        assert!(
            etcd.etcdctl(&["get", "--prefix", "/hids/v1/blobs/", "--keys-only"], None)
                .stdout
                .len()
                > 10,
            "the settings went to a blob"
        );

        // Three lease lifetimes with the blob read held up: the lease must live on.
        let update = next_update(&mut updates, Duration::from_secs(9)).await;
        assert!(
            update.is_none(),
            "nothing is delivered while the blob read waits: {update:?}"
        );
        let listed = etcd.get("/hids/v1/agents/ka-1");
        assert!(
            !listed.is_empty(),
            "the lease expired while the session waited for the blob: keepalives waited behind it"
        );

        // Once a slot is free the document is applied, on the same registration.
        drop(held);
        match next_update(&mut updates, Duration::from_secs(10)).await {
            Some(Update::Apply { body, .. }) => assert_eq!(body.plugins[0].name, "process"),
            other => panic!("expected the document to be applied, got {other:?}"),
        }
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    });
}
