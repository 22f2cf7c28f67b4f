//! `lb-agent realserver up|down` in a namespace of its own: the VIPs on `lo` and the ARP
//! sysctls, both directions idempotent, and the VIPs taken from a configuration.

mod common;

use common::Lab;

fn realserver(lab: &mut Lab, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.ns("rs")))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("realserver")
        .args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctl(lab: &Lab, key: &str) -> String {
    lab.exec("rs", &["sysctl", "-n", key]).trim().to_string()
}

#[test]
fn up_and_down_are_idempotent_and_complete() {
    let mut lab = Lab::new("rs");
    lab.add_ns("rs");
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        "[dataplane]\ninterface = \"eth0\"\n[[virtual_server]]\naddress = \"10.1.1.176\"\nport = 3306\n[[virtual_server]]\naddress = \"10.1.1.177\"\nport = 3306\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    for _ in 0..2 {
        realserver(&mut lab, &["up", "--config", &cfg, "--vip", "fd00::176"]);
    }
    let addrs = lab.ip("rs", &["-o", "addr", "show", "dev", "lo"]);
    for want in [
        "10.1.1.176/32",
        "10.1.1.177/32",
        "fd00::176/128",
        "lo:0",
        "lo:1",
    ] {
        assert!(addrs.contains(want), "{want} missing:\n{addrs}");
    }
    assert!(lab.ip("rs", &["link", "show", "lo"]).contains("UP"));
    for dev in ["all", "lo"] {
        assert_eq!(
            sysctl(&lab, &format!("net.ipv4.conf.{dev}.arp_ignore")),
            "1"
        );
        assert_eq!(
            sysctl(&lab, &format!("net.ipv4.conf.{dev}.arp_announce")),
            "2"
        );
    }
    for _ in 0..2 {
        realserver(&mut lab, &["down", "--config", &cfg, "--vip", "fd00::176"]);
    }
    let addrs = lab.ip("rs", &["-o", "addr", "show", "dev", "lo"]);
    assert!(
        !addrs.contains("10.1.1.17") && !addrs.contains("fd00::176"),
        "{addrs}"
    );
    for dev in ["all", "lo"] {
        assert_eq!(
            sysctl(&lab, &format!("net.ipv4.conf.{dev}.arp_ignore")),
            "0"
        );
        assert_eq!(
            sysctl(&lab, &format!("net.ipv4.conf.{dev}.arp_announce")),
            "0"
        );
    }
    // No VIPs at all is a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["realserver", "up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VIPs"));
    let _ = std::fs::remove_dir_all(&dir);
}
