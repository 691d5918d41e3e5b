//! The `rfc2136` step against a real BIND9 primary with a TSIG key made by `tsig-keygen`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use providers::rfc2136::{Rfc2136, Settings};
use providers::{Failure, Order};

use crate::common::{Collect, Server, check_settings, free_port, installed, wait_until};

const REGIONS: [&str; 3] = ["ap-south-1", "eu-west-1", "us-east-1"];
const EU: &str = "192.0.2.1";
const US: &str = "192.0.2.2";
const AP: &str = "192.0.2.3";

/// A BIND9 primary for `shop.example.` on loopback, updatable with key `switchyard`.
struct Bind {
    _server: Server,
    port: u16,
    dir: tempfile::TempDir,
}

/// Starts named with an hmac-sha256 key, or says why it cannot (not installed) and returns
/// `None`.
fn start_bind() -> Option<Bind> {
    start_bind_with("hmac-sha256")
}

/// Starts named with a key `tsig-keygen -a ALGORITHM` made, or returns `None` (not installed).
fn start_bind_with(algorithm: &str) -> Option<Bind> {
    let (Some(named), Some(keygen)) = (installed("named"), installed("tsig-keygen")) else {
        eprintln!(
            "SKIPPED: BIND9 is not installed (apt-get install bind9 bind9-utils, or scripts/install-test-deps.sh)"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path();
    let key = Command::new(keygen)
        .args(["-a", algorithm, "switchyard"])
        .output()
        .expect("run tsig-keygen");
    assert!(
        key.status.success(),
        "tsig-keygen failed: {}",
        String::from_utf8_lossy(&key.stderr)
    );
    std::fs::write(path.join("switchyard.key"), &key.stdout).expect("write the key");
    std::fs::write(
        path.join("shop.example.zone"),
        format!(
            "$TTL 60\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A {EU}\n"
        ),
    )
    .expect("write the zone");
    let port = free_port();
    let d = path.display();
    std::fs::write(
        path.join("named.conf"),
        format!(
            "options {{\n directory \"{d}\";\n pid-file \"{d}/named.pid\";\n lock-file \"{d}/named.lock\";\n session-keyfile \"{d}/session.key\";\n managed-keys-directory \"{d}\";\n listen-on port {port} {{ 127.0.0.1; }};\n listen-on-v6 {{ none; }};\n recursion no;\n notify no;\n dnssec-validation no;\n}};\ncontrols {{ }};\ninclude \"{d}/switchyard.key\";\nzone \"shop.example\" {{\n type primary;\n file \"{d}/shop.example.zone\";\n update-policy {{ grant switchyard zonesub ANY; }};\n}};\n"
        ),
    )
    .expect("write named.conf");
    let log = path.join("named.log");
    let child = Command::new(named)
        .args(["-g", "-4", "-n", "1", "-c"])
        .arg(path.join("named.conf"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(path.join("named.err")).expect("log"))
        .spawn()
        .expect("start named");
    let server = Server {
        child,
        log: path.join("named.err"),
    };
    wait_until("named to load the zone", Duration::from_secs(30), || {
        let text = server.log_text();
        assert!(!text.contains("exiting (due to fatal error)"), "named failed:\n{text}");
        text.lines().any(|line| line.ends_with(" running"))
    });
    Some(Bind {
        _server: server,
        port,
        dir,
    })
}

impl Bind {
    fn settings(&self, extra: &str) -> String {
        format!(
            "server = \"127.0.0.1:{}\"\nzone = \"shop.example.\"\nname = \"www.shop.example.\"\nkey = {{ file = \"switchyard.key\" }}\ntimeout_ms = 2000\n{extra}\n[values]\n\"eu-west-1\" = [\"{EU}\"]\n\"us-east-1\" = [\"{US}\"]\n\"ap-south-1\" = [\"{AP}\"]\n",
            self.port
        )
    }

    fn step(&self, extra: &str) -> Rfc2136 {
        step_in(self.dir.path(), &self.settings(extra)).expect("the settings check")
    }

    /// `dig` the primary, as an outside client sees it.
    fn dig(&self, name: &str, kind: &str) -> String {
        let output = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                name,
                kind,
                "+short",
                "+norecurse",
            ])
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

fn step_in(folder: &Path, toml_text: &str) -> Result<Rfc2136, Vec<String>> {
    check_settings(
        toml_text,
        Collect::in_folder(folder, &REGIONS),
        |settings: &Settings, checker| settings.check("dns", checker),
    )
}

fn order(generation: u64, from: &str, to: &str) -> Order {
    crate::support::order(generation, from, to, false)
}

#[tokio::test]
async fn an_update_is_accepted_verified_and_idempotent() {
    let Some(bind) = start_bind() else { return };
    let step = bind.step("");
    let outcome = step.run(&order(5, "eu-west-1", "us-east-1")).await;
    let detail = outcome.expect("the update succeeds");
    assert!(
        detail.contains(US) && detail.contains("now") && detail.contains("generation 5"),
        "{detail}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), US);
    assert!(
        bind.dig("_switchyard-generation.www.shop.example.", "TXT")
            .contains("generation=5")
    );
    // The same order again (a retry): nothing to change, still verified.
    let again = step
        .run(&order(5, "eu-west-1", "us-east-1"))
        .await
        .expect("the retry succeeds");
    assert!(again.contains("already"), "{again}");
    // Back, with the next generation, over TCP.
    let tcp = bind.step("transport = \"tcp\"");
    tcp.run(&order(6, "us-east-1", "eu-west-1"))
        .await
        .expect("the failback succeeds");
    assert_eq!(bind.dig("www.shop.example.", "A"), EU);
}

#[tokio::test]
async fn a_stale_controller_is_fenced_and_changes_nothing() {
    let Some(bind) = start_bind() else { return };
    let step = bind.step("");
    step.run(&order(7, "eu-west-1", "us-east-1"))
        .await
        .expect("generation 7 succeeds");
    // An older decision arriving late reads generation 7 and stops.
    let late = step.run(&order(6, "us-east-1", "eu-west-1")).await;
    assert!(
        matches!(&late, Err(Failure::Fenced(m)) if m.contains("newer")),
        "{late:?}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), US);

    // A controller that read before a newer one wrote: the server refuses its update because
    // the prerequisite (the value it read) no longer holds.
    let address = step.resolve().await.expect("address");
    let read = step.observe(address).await.expect("read");
    step.run(&order(9, "us-east-1", "eu-west-1"))
        .await
        .expect("generation 9 succeeds");
    let stale = step.apply(&order(8, "eu-west-1", "us-east-1"), address, &read).await;
    assert!(
        matches!(&stale, Err(Failure::Fenced(m)) if m.contains("prerequisite") && m.contains("generation 9")),
        "{stale:?}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), EU);
    assert!(
        bind.dig("_switchyard-generation.www.shop.example.", "TXT")
            .contains("generation=9")
    );

    // Without the generation record the value itself is the prerequisite.
    let plain = bind.step("generation_fence = false");
    let read = plain.observe(address).await.expect("read");
    plain
        .run(&order(10, "eu-west-1", "ap-south-1"))
        .await
        .expect("generation 10 succeeds");
    let stale = plain.apply(&order(10, "eu-west-1", "us-east-1"), address, &read).await;
    assert!(
        matches!(&stale, Err(Failure::Fenced(m)) if m.contains("prerequisite")),
        "{stale:?}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), AP);
}

#[tokio::test]
async fn a_bad_key_is_refused_with_a_clear_message() {
    let Some(bind) = start_bind() else { return };
    let path = bind.dir.path();
    // The right name with another secret: BADSIG.
    std::fs::write(
        path.join("wrong.key"),
        "key \"switchyard\" { algorithm hmac-sha256; secret \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"; };\n",
    )
    .expect("write");
    let wrong = step_in(path, &bind.settings("").replace("switchyard.key", "wrong.key")).expect("checks");
    let outcome = wrong.run(&order(3, "eu-west-1", "us-east-1")).await;
    assert!(
        matches!(&outcome, Err(Failure::Refused(m)) if m.contains("BADSIG") && m.contains("'switchyard'")),
        "{outcome:?}"
    );
    // A name the server does not know: BADKEY.
    std::fs::write(
        path.join("unknown.key"),
        "key \"stranger\" { algorithm hmac-sha256; secret \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"; };\n",
    )
    .expect("write");
    let unknown = step_in(path, &bind.settings("").replace("switchyard.key", "unknown.key")).expect("checks");
    let outcome = unknown.run(&order(3, "eu-west-1", "us-east-1")).await;
    assert!(
        matches!(&outcome, Err(Failure::Refused(m)) if m.contains("BADKEY") && m.contains("'stranger'")),
        "{outcome:?}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), EU, "nothing changed");
}

/// The base64 secret of the `tsig-keygen` file BIND holds.
fn secret_of(bind: &Bind) -> String {
    let file = std::fs::read_to_string(bind.dir.path().join("switchyard.key")).expect("key file");
    let (_, after) = file.split_once("secret \"").expect("a secret");
    after.split('"').next().expect("closed").to_string()
}

#[tokio::test]
async fn an_hmac_sha512_key_updates_from_its_file_or_a_bare_secret_with_its_algorithm() {
    let Some(bind) = start_bind_with("hmac-sha512") else {
        return;
    };
    // tsig-keygen's file names the algorithm.
    let step = bind.step("");
    step.run(&order(4, "eu-west-1", "us-east-1"))
        .await
        .expect("signed with hmac-sha512, verified by BIND and back");
    assert_eq!(bind.dig("www.shop.example.", "A"), US);
    // The bare secret with `algorithm`: the same key.
    let path = bind.dir.path();
    std::fs::write(path.join("bare.secret"), secret_of(&bind)).expect("write");
    let bare = bind
        .settings("key_name = \"switchyard\"\nalgorithm = \"hmac-sha512\"")
        .replace("switchyard.key", "bare.secret");
    let step = step_in(path, &bare).expect("checks");
    step.run(&order(5, "us-east-1", "ap-south-1"))
        .await
        .expect("the bare secret with its algorithm");
    assert_eq!(bind.dig("www.shop.example.", "A"), AP);
    // Without `algorithm` the bare secret is taken as hmac-sha256: BIND holds no such key.
    let default = bind
        .settings("key_name = \"switchyard\"")
        .replace("switchyard.key", "bare.secret");
    let step = step_in(path, &default).expect("checks");
    let outcome = step.run(&order(6, "ap-south-1", "eu-west-1")).await;
    assert!(
        matches!(&outcome, Err(Failure::Refused(m)) if m.contains("BADKEY") && m.contains("hmac-sha256")),
        "{outcome:?}"
    );
    assert_eq!(bind.dig("www.shop.example.", "A"), AP, "nothing changed");
    // The file's algorithm contradicted: refused at the check, pointing at the key.
    let errors = step_in(path, &bind.settings("algorithm = \"hmac-sha256\""))
        .map(|_| ())
        .expect_err("a mismatch");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("hmac-sha512") && e.contains("remove `algorithm`")),
        "{errors:?}"
    );
}

#[test]
fn settings_problems_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("k.key"),
        "key \"k\" { algorithm hmac-md5; secret \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"; };",
    )
    .expect("write");
    let errors = step_in(
        dir.path(),
        "server = \"127.0.0.1:x\"\nzone = \"shop.example.\"\nname = \"www.other.example.\"\ntype = \"MX\"\ntransport = \"quic\"\nkey = { file = \"k.key\" }\n[values]\n\"eu-west-1\" = [\"192.0.2.1\"]\n\"mars-1\" = [\"192.0.2.9\"]\n",
    )
    .map(|_| ())
    .expect_err("errors");
    let all = errors.join("\n");
    for expected in [
        "bad port",
        "not inside zone",
        "type 'MX'",
        "transport 'quic'",
        "MD5 is broken",
        "'mars-1'",
        "no entry for region 'us-east-1'",
        "no entry for region 'ap-south-1'",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}
