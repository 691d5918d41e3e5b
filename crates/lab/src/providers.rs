//! `switchyard lab --providers`: next to Switchyard's own DNS, the lab runs the infrastructure
//! users already have and puts the controller's provider steps in its runbook:
//! - **BIND9** (`named`), the primary of the lab's zone with a TSIG key, updated by an
//!   `rfc2136` step;
//! - **HAProxy** in front of every region's shops (one server per region, the region's front
//!   door), its runtime API on a unix socket, driven by a `haproxy` step;
//! - **moto**'s server as the AWS API: a Route 53 hosted zone (the lab's zone, created by the
//!   component's setup requests) whose record a `route53` step moves, and an SSM parameter
//!   holding the apps' `AWS_REGION`, written by an `ssm_parameter` step. moto is a stand-in
//!   for AWS (it checks no signature); the steps call it with the AWS SDK exactly as they
//!   would call AWS, with the lab's keys from a shared credentials file.
//!
//! Each is a [`Kit`]: the programs it needs (found on `PATH` or in /usr/sbin; a kit whose
//! programs are missing is left out and the lab says how to install them), its files, its
//! components, its runbook step and what `drill-targets.toml` needs to watch it. Pure, like
//! the plan. To add another, write a function like [`bind`] and list it in [`kits`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::configs::{Haproxy, PerRegion, ProviderWatch, Rfc2136, Route53, SecretFile, SsmParameter, Step};
use crate::plan::{LabFile, SHOP_NAME, ZONE, region_ip};
use crate::supervisor::ComponentSpec;

/// The TSIG key the lab's BIND9 and controller share.
pub const TSIG_KEY_NAME: &str = "switchyard-lab";
/// Its file, in the config folder (written by `run` with a fresh secret unless it exists).
pub const TSIG_KEY_FILE: &str = "bind-tsig.key";
/// HAProxy's runtime API socket, in the lab directory.
pub const HAPROXY_SOCKET: &str = "run/haproxy.sock";
/// HAProxy's backend of the shops.
pub const HAPROXY_BACKEND: &str = "shop";
/// The AWS profile of the lab's keys for moto, in [`AWS_CREDENTIALS_FILE`].
pub const AWS_PROFILE: &str = "switchyard-lab";
/// The lab's shared credentials file, in the config folder. moto accepts any keys; these are
/// not secrets, but they go through the AWS chain like real ones would.
pub const AWS_CREDENTIALS_FILE: &str = "aws-credentials";
/// The SSM parameter the apps would read `AWS_REGION` from.
pub const SSM_PARAMETER: &str = "/switchyard-lab/AWS_REGION";
/// The AWS region of the lab's SSM parameter.
pub const SSM_REGION: &str = "us-east-1";

/// Programs the kits need, where installed (the binary looks them up; the plan stays pure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programs {
    pub named: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    /// moto's `moto_server` (PyPI `moto[server]`).
    pub moto_server: Option<PathBuf>,
    /// The Python that runs `moto_server` (its `#!` line), which runs [`MOTO_LAB_SCRIPT`].
    pub moto_python: Option<PathBuf>,
}

/// moto's server with one correction to its Route 53 batches (see the script's docstring),
/// written to the lab's config folder and run by moto's own Python.
pub const MOTO_LAB_SCRIPT: &str = include_str!("moto_lab.py");

impl Programs {
    /// Looks the programs up on `PATH` and in the sbin folders (where Debian installs servers).
    pub fn find() -> Programs {
        // moto_server on PATH, in an active virtualenv, or in the project's own venv
        // (./scripts/install-test-deps.sh). The Python that runs moto with the lab's correction
        // is the one its `#!` names, or, for a wrapper such as pyenv's shim (`#!/usr/bin/env
        // bash`), the `python3` beside it (pyenv's shim of it). Without one, moto_server runs
        // as it is.
        let candidates: Vec<PathBuf> = find_program("moto_server")
            .into_iter()
            .chain(
                std::env::var_os("VIRTUAL_ENV")
                    .map(|venv| PathBuf::from(venv).join("bin"))
                    .into_iter()
                    .chain(std::iter::once(PathBuf::from(".venv/bin")))
                    .map(|dir| dir.join("moto_server"))
                    .filter(|candidate| candidate.is_file())
                    .filter_map(|found| std::path::absolute(found).ok()),
            )
            .collect();
        let with_python = candidates
            .iter()
            .find_map(|server| moto_python(server).map(|python| (server.clone(), python)));
        let (moto_server, moto_python) = match with_python {
            Some((server, python)) => (Some(server), Some(python)),
            None => (candidates.into_iter().next(), None),
        };
        Programs {
            named: find_program("named"),
            haproxy: find_program("haproxy"),
            moto_python,
            moto_server,
        }
    }
}

/// The Python that has moto_server's moto: the one its `#!` names, else a `python3` beside it.
fn moto_python(server: &Path) -> Option<PathBuf> {
    python_interpreter(server).or_else(|| {
        let beside = server.parent()?.join("python3");
        beside.is_file().then_some(beside)
    })
}

/// The interpreter of a Python script: its `#!` program, when that is a Python.
fn python_interpreter(script: &Path) -> Option<PathBuf> {
    interpreter(script).filter(|program| {
        program
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("python"))
    })
}

/// The interpreter a script's `#!` line names (`#!/usr/bin/env python3` is looked up on PATH).
fn interpreter(script: &Path) -> Option<PathBuf> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(script).ok()?;
    let mut first = String::new();
    std::io::BufReader::new(file.take(4096)).read_line(&mut first).ok()?;
    let line = first.strip_prefix("#!")?.trim();
    let mut words = line.split_whitespace();
    let program = PathBuf::from(words.next()?);
    if program.file_name().is_some_and(|name| name == "env") {
        return words.find(|w| !w.starts_with('-')).and_then(find_program);
    }
    program.is_file().then_some(program)
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Where the lab's pieces are, as the kits need them.
pub(crate) struct Layout<'a> {
    pub dir: &'a Path,
    pub regions: &'a [&'a str],
    pub shop_port: u16,
    pub bind_port: u16,
    pub haproxy_port: u16,
    pub moto_port: u16,
    /// The controller runs (the steps go into its runbook).
    pub controller: bool,
}

/// What the kits add to a plan.
#[derive(Default)]
pub(crate) struct Additions {
    pub files: Vec<LabFile>,
    pub components: Vec<ComponentSpec>,
    pub bound: Vec<(String, String)>,
    /// `[[runbook]]` steps for the controller's file.
    pub runbook: Vec<Step>,
    /// `[[providers]]` for `drill-targets.toml`.
    pub drill_targets: Vec<ProviderWatch>,
    /// TSIG key files to make (path, key name).
    pub tsig_keys: Vec<(PathBuf, String)>,
    /// Files from an earlier run to remove before starting.
    pub stale: Vec<PathBuf>,
    /// What could not be started, and how to fix it.
    pub notes: Vec<String>,
    /// Environment of the controller (the AWS SDK's shared files).
    pub controller_env: Vec<(String, String)>,
}

type Kit = fn(&Layout<'_>, &Programs, &mut Additions);

/// Every kit, in start order.
pub(crate) fn kits() -> Vec<Kit> {
    vec![bind, haproxy, moto]
}

pub(crate) fn additions(layout: &Layout<'_>, programs: &Programs) -> Additions {
    let mut additions = Additions::default();
    for kit in kits() {
        kit(layout, programs, &mut additions);
    }
    additions
}

/// A component running an outside program through `switchyard lab exec`, which waits until
/// `ready` accepts TCP connections and takes the program down with it.
pub(crate) fn external(name: &str, kind: &str, program: &Path, args: &[String], ready: &str) -> ComponentSpec {
    let mut wrapper = vec![
        "lab".to_string(),
        "exec".to_string(),
        "--ready-tcp".to_string(),
        ready.to_string(),
        "--program".to_string(),
        program.display().to_string(),
    ];
    for arg in args {
        wrapper.push(format!("--arg={arg}"));
    }
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    ComponentSpec::subcommand(name, kind, &wrapper)
}

fn missing(kit: &str, program: &str, package: &str) -> String {
    format!(
        "--providers: {kit} not started: {program} is not installed; install it with `apt-get install {package}` (or ./scripts/install-test-deps.sh) and start the lab again"
    )
}

/// BIND9 as the zone's primary, updatable with the lab's TSIG key.
fn bind(layout: &Layout<'_>, programs: &Programs, additions: &mut Additions) {
    let Some(named) = &programs.named else {
        additions.notes.push(missing("BIND9 (rfc2136)", "named", "bind9"));
        return;
    };
    let config = layout.dir.join("config");
    let data = layout.dir.join("data").join("bind");
    let zone_name = ZONE.trim_end_matches('.');
    let zone_file = data.join(format!("{zone_name}.zone"));
    let key_file = config.join(TSIG_KEY_FILE);
    let address = format!("127.0.0.1:{}", layout.bind_port);
    let d = data.display();
    // The zone starts with the first region's address, as the lab's own DNS does; updates go
    // to a journal, removed at every start so the zone file and journal always agree.
    additions.files.push(LabFile {
        path: zone_file.clone(),
        contents: format!(
            "$TTL 5\n@ IN SOA ns1 hostmaster 1 3600 600 86400 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\n{} IN A {}\n",
            SHOP_NAME
                .strip_suffix(ZONE)
                .map_or(SHOP_NAME, |label| label.trim_end_matches('.')),
            region_ip(0)
        ),
    });
    additions.stale.push(data.join(format!("{zone_name}.zone.jnl")));
    let named_conf = config.join("named.conf");
    additions.files.push(LabFile {
        path: named_conf.clone(),
        contents: format!(
            "# Written by `switchyard lab --providers`: the lab zone's primary, updated by the controller's rfc2136 step.\noptions {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  lock-file \"{d}/named.lock\";\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  listen-on port {} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  notify no;\n  dnssec-validation no;\n}};\ncontrols {{ }};\ninclude \"{}\";\nzone \"{zone_name}\" {{\n  type primary;\n  file \"{}\";\n  update-policy {{ grant {TSIG_KEY_NAME} zonesub ANY; }};\n}};\n",
            layout.bind_port,
            key_file.display(),
            zone_file.display()
        ),
    });
    additions.tsig_keys.push((key_file, TSIG_KEY_NAME.to_string()));
    additions.bound.push(("bind9".to_string(), address.clone()));
    let args: Vec<String> = ["-g", "-4", "-n", "1", "-c"]
        .iter()
        .map(|a| a.to_string())
        .chain(std::iter::once(named_conf.display().to_string()))
        .collect();
    additions
        .components
        .push(external("bind9", "bind9", named, &args, &address));
    // Without the controller nothing moves the record: nothing for a drill to watch.
    if !layout.controller {
        return;
    }
    let values = region_ips(layout.regions);
    // RFC 2136: the same record on the lab's BIND9 primary.
    additions.runbook.push(Step {
        rfc2136: Some(Rfc2136 {
            server: address.clone(),
            zone: ZONE.to_string(),
            name: SHOP_NAME.to_string(),
            ttl: 5,
            key: SecretFile {
                file: PathBuf::from(TSIG_KEY_FILE),
            },
            values: values.clone(),
        }),
        ..Step::new("bind9", "rfc2136")
    });
    additions.drill_targets.push(ProviderWatch {
        name: "rfc2136".to_string(),
        kind: "dns".to_string(),
        dns_server: Some(address),
        record: Some(SHOP_NAME.to_string()),
        regions: values,
        ..ProviderWatch::default()
    });
}

/// Per region, its front address (what the DNS providers' records hold for it).
fn region_ips(regions: &[&str]) -> PerRegion {
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| (region.to_string(), vec![region_ip(i)]))
        .collect()
}

/// HAProxy in front of every region's shops, its runtime API on a unix socket.
fn haproxy(layout: &Layout<'_>, programs: &Programs, additions: &mut Additions) {
    let Some(haproxy) = &programs.haproxy else {
        additions.notes.push(missing("HAProxy (haproxy)", "haproxy", "haproxy"));
        return;
    };
    let socket = layout.dir.join(HAPROXY_SOCKET);
    let address = format!("127.0.0.1:{}", layout.haproxy_port);
    let mut text = format!(
        "# Written by `switchyard lab --providers`: one server per region (its front door); the controller's haproxy step sets them ready or maint.\nglobal\n  stats socket {} mode 600 level admin\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\nfrontend shop\n  bind {address}\n  default_backend {HAPROXY_BACKEND}\n\nbackend {HAPROXY_BACKEND}\n",
        socket.display()
    );
    for (i, region) in layout.regions.iter().enumerate() {
        let state = if i == 0 { "" } else { " disabled" };
        let _ = writeln!(text, "  server {region} {}:{}{state}", region_ip(i), layout.shop_port);
    }
    let path = layout.dir.join("config").join("haproxy.cfg");
    additions.files.push(LabFile {
        path: path.clone(),
        contents: text,
    });
    additions.stale.push(socket.clone());
    additions.bound.push(("haproxy".to_string(), address.clone()));
    let args = vec!["-db".to_string(), "-f".to_string(), path.display().to_string()];
    additions
        .components
        .push(external("haproxy", "haproxy", haproxy, &args, &address));
    if !layout.controller {
        return;
    }
    let servers: PerRegion = layout
        .regions
        .iter()
        .map(|region| (region.to_string(), vec![format!("{HAPROXY_BACKEND}/{region}")]))
        .collect();
    // HAProxy's runtime API: the serving region's server ready, the others in maintenance.
    additions.runbook.push(Step {
        haproxy: Some(Haproxy {
            socket: socket.clone(),
            standby: "maint".to_string(),
            regions: servers.clone(),
        }),
        ..Step::new("haproxy", "haproxy")
    });
    additions.drill_targets.push(ProviderWatch {
        name: "haproxy".to_string(),
        kind: "haproxy".to_string(),
        socket: Some(socket),
        regions: servers,
        ..ProviderWatch::default()
    });
}

/// moto's server as the AWS API: the lab's zone as a Route 53 hosted zone and the apps'
/// `AWS_REGION` parameter in SSM, created by setup requests once moto listens.
fn moto(layout: &Layout<'_>, programs: &Programs, additions: &mut Additions) {
    let Some(moto_server) = &programs.moto_server else {
        additions.notes.push(
            "--providers: moto (route53, ssm_parameter) not started: moto_server is not installed; install it with `pip install 'moto[server]'` (in a virtualenv on PATH, or ./.venv via ./scripts/install-test-deps.sh) and start the lab again".to_string(),
        );
        return;
    };
    let config = layout.dir.join("config");
    let address = format!("127.0.0.1:{}", layout.moto_port);
    let endpoint = format!("http://{address}");
    let credentials = config.join(AWS_CREDENTIALS_FILE);
    additions.files.push(LabFile {
        path: credentials.clone(),
        contents: format!(
            "# Written by `switchyard lab --providers`: moto's keys (moto accepts any; not secrets).\n[{AWS_PROFILE}]\naws_access_key_id = switchyard-lab\naws_secret_access_key = switchyard-lab\n"
        ),
    });
    // An empty config file, so the controller reads no profile of the user's ~/.aws/config.
    let aws_config = config.join("aws-config");
    additions.files.push(LabFile {
        path: aws_config.clone(),
        contents: "# Written by `switchyard lab --providers`: no settings (the steps name region and endpoint).\n"
            .into(),
    });
    // moto picks the service from the credential scope of the Authorization header; it
    // checks no signature, so the setup's requests carry a scope and no real signature.
    let scope = |service: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential=switchyard-lab/20260101/{SSM_REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0"
        )
    };
    let zone_name = ZONE;
    let setup = serde_json::json!([
        {
            "what": "create the lab's hosted zone",
            "method": "POST",
            "path": "/2013-04-01/hostedzone",
            "headers": [["Authorization", scope("route53")], ["Content-Type", "application/xml"]],
            "body": format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>{zone_name}</Name><CallerReference>switchyard-lab</CallerReference></CreateHostedZoneRequest>"
            ),
        },
        {
            "what": "create the AWS_REGION parameter",
            "method": "POST",
            "path": "/",
            "headers": [
                ["Authorization", scope("ssm")],
                ["Content-Type", "application/x-amz-json-1.1"],
                ["X-Amz-Target", "AmazonSSM.PutParameter"],
            ],
            "body": serde_json::json!({
                "Name": SSM_PARAMETER,
                "Value": layout.regions.first().copied().unwrap_or_default(),
                "Type": "String",
                "Overwrite": true,
            }).to_string(),
        },
    ]);
    let setup_file = config.join("moto-setup.json");
    additions.files.push(LabFile {
        path: setup_file.clone(),
        contents: serde_json::to_string_pretty(&setup).unwrap_or_default(),
    });
    additions.bound.push(("moto".to_string(), address.clone()));
    let args = vec![
        "-H".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        layout.moto_port.to_string(),
    ];
    // moto's own Python runs moto with the lab's correction when it is known; else moto_server.
    let mut spec = match &programs.moto_python {
        Some(python) => {
            let script = config.join("moto_lab.py");
            additions.files.push(LabFile {
                path: script.clone(),
                contents: MOTO_LAB_SCRIPT.to_string(),
            });
            let mut with_script = vec![script.display().to_string()];
            with_script.extend(args);
            external("moto", "moto", python, &with_script, &address)
        }
        None => external("moto", "moto", moto_server, &args, &address),
    };
    spec.args.push(format!("--setup={}", setup_file.display()));
    additions.components.push(spec);
    if !layout.controller {
        return;
    }
    additions.controller_env.extend([
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            credentials.display().to_string(),
        ),
        ("AWS_CONFIG_FILE".to_string(), aws_config.display().to_string()),
        // moto is on loopback; the SDK must not send it through a proxy of the environment.
        ("NO_PROXY".to_string(), "127.0.0.1,localhost".to_string()),
    ]);
    // Route 53 (moto's server in the lab): the same record in a hosted zone found by its name;
    // SSM Parameter Store (moto): the parameter the apps read AWS_REGION from.
    let values = region_ips(layout.regions);
    let parameter_values: PerRegion = layout
        .regions
        .iter()
        .map(|region| (region.to_string(), vec![region.to_string()]))
        .collect();
    additions.runbook.push(Step {
        timeout_ms: Some(15_000),
        route53: Some(Route53 {
            zone: ZONE.to_string(),
            name: SHOP_NAME.to_string(),
            kind: "A".to_string(),
            ttl: 5,
            insync_timeout_ms: 10_000,
            endpoint_url: endpoint.clone(),
            profile: AWS_PROFILE.to_string(),
            values: values.clone(),
        }),
        ..Step::new("route53", "route53")
    });
    additions.runbook.push(Step {
        timeout_ms: Some(15_000),
        ssm_parameter: Some(SsmParameter {
            name: SSM_PARAMETER.to_string(),
            region: SSM_REGION.to_string(),
            endpoint_url: endpoint.clone(),
            profile: AWS_PROFILE.to_string(),
        }),
        ..Step::new("ssm", "ssm_parameter")
    });
    additions.drill_targets.push(ProviderWatch {
        name: "route53".to_string(),
        kind: "route53".to_string(),
        zone: Some(ZONE.to_string()),
        record: Some(SHOP_NAME.to_string()),
        endpoint_url: Some(endpoint.clone()),
        profile: Some(AWS_PROFILE.to_string()),
        credentials_file: Some(credentials.clone()),
        regions: values,
        ..ProviderWatch::default()
    });
    additions.drill_targets.push(ProviderWatch {
        name: "ssm".to_string(),
        kind: "ssm".to_string(),
        parameter: Some(SSM_PARAMETER.to_string()),
        aws_region: Some(SSM_REGION.to_string()),
        endpoint_url: Some(endpoint),
        profile: Some(AWS_PROFILE.to_string()),
        credentials_file: Some(credentials),
        regions: parameter_values,
        ..ProviderWatch::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripts_interpreter_comes_from_its_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let python = dir.path().join("python3");
        std::fs::write(&python, "").expect("write");
        let direct = dir.path().join("moto_server");
        std::fs::write(&direct, format!("#!{}\nimport re\n", python.display())).expect("write");
        assert_eq!(interpreter(&direct), Some(python.clone()));
        // `env` looks the program up on PATH (sh is on every PATH here).
        let via_env = dir.path().join("via-env");
        std::fs::write(&via_env, "#!/usr/bin/env -S sh\n").expect("write");
        assert!(interpreter(&via_env).is_some_and(|p| p.ends_with("sh")));
        // Only a Python runs the lab's moto script: pyenv's shim is a bash script.
        assert_eq!(python_interpreter(&direct), Some(python.clone()));
        assert_eq!(python_interpreter(&via_env), None);
        // A wrapper's moto comes from the python3 beside it (pyenv's shims directory).
        let shim = dir.path().join("shims");
        std::fs::create_dir(&shim).expect("mkdir");
        std::fs::write(
            shim.join("moto_server"),
            "#!/usr/bin/env sh\nexec pyenv exec moto_server\n",
        )
        .expect("write");
        assert_eq!(moto_python(&shim.join("moto_server")), None);
        std::fs::write(shim.join("python3"), "#!/usr/bin/env sh\n").expect("write");
        assert_eq!(moto_python(&shim.join("moto_server")), Some(shim.join("python3")));
        assert_eq!(moto_python(&direct), Some(python.clone()));
        // No `#!`, an interpreter that is not there, or no file: none.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "import re\n").expect("write");
        assert_eq!(interpreter(&plain), None);
        let gone = dir.path().join("gone");
        std::fs::write(&gone, "#!/nonexistent/python3\n").expect("write");
        assert_eq!(interpreter(&gone), None);
        assert_eq!(interpreter(&dir.path().join("missing")), None);
    }
}
