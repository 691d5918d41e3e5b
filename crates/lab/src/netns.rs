//! `--netns`: each region's processes in a network namespace of their own, joined to the lab's
//! namespace by a veth pair (`ip` from iproute2; Linux, root). The lab's links still run
//! through the fault proxy, which listens on each region's gateway address; `cut` takes the
//! region's end of the pair down, so packets to and from the region vanish in the kernel (no
//! refusal, no reset: connections time out), as when a region's network fails.

use std::process::Command;

use crate::plan::RegionNet;
use crate::supervisor::IP_PROGRAM;

/// Runs `ip ARGS`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new(IP_PROGRAM)
        .args(args)
        .output()
        .map_err(|e| format!("run `{IP_PROGRAM} {}`: {e} (is iproute2 installed?)", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{IP_PROGRAM} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Creates the namespaces and their veth pairs, replacing any left by a lab that was killed.
pub fn setup(nets: &[RegionNet]) -> Result<(), String> {
    teardown(nets);
    for net in nets {
        let gateway = format!("{}/24", net.gateway);
        let address = format!("{}/24", net.address);
        let ns = net.namespace.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link",
                "add",
                &net.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &net.inner_veth,
            ],
            &["link", "set", &net.inner_veth, "netns", ns],
            &["addr", "add", &gateway, "dev", &net.host_veth],
            &["link", "set", &net.host_veth, "up"],
            &[
                "netns",
                "exec",
                ns,
                IP_PROGRAM,
                "addr",
                "add",
                &address,
                "dev",
                &net.inner_veth,
            ],
            &["netns", "exec", ns, IP_PROGRAM, "link", "set", &net.inner_veth, "up"],
            &["netns", "exec", ns, IP_PROGRAM, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(error) = ip(step) {
                teardown(nets);
                return Err(format!(
                    "--netns: {error}. It needs root and iproute2 (`ip netns`); run the lab without --netns otherwise"
                ));
            }
        }
    }
    Ok(())
}

/// Deletes the namespaces (their veth pairs go with them). Quiet: some may not exist.
pub fn teardown(nets: &[RegionNet]) {
    for net in nets {
        let _ = ip(&["netns", "del", &net.namespace]);
        let _ = ip(&["link", "del", &net.host_veth]);
    }
}

/// Takes the region's end of its link down (`up = false`: the region is cut off) or up again.
pub fn set_link(net: &RegionNet, up: bool) -> Result<(), String> {
    ip(&[
        "netns",
        "exec",
        &net.namespace,
        IP_PROGRAM,
        "link",
        "set",
        &net.inner_veth,
        if up { "up" } else { "down" },
    ])
}
