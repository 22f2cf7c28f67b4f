//! `lb-agent import-keepalived` on the reference recipe's two configs and on what it cannot
//! express.

use std::{path::Path, process::Command};

use lb_agent::config::Config;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
}

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_recipe_converts_and_matches_configs() {
    for host in ["master", "backup"] {
        let out = agent()
            .args([
                "import-keepalived",
                &data(&format!("keepalived-{host}.conf")),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{host}: {stderr}");
        // The one statement without an equivalent is reported, with its line.
        assert!(
            stderr.contains(&format!(
                "keepalived-{host}.conf:18: note: `lvs_sync_daemon_inteface`"
            )),
            "{stderr}"
        );
        let converted = Config::parse(
            Path::new("converted.toml"),
            &String::from_utf8_lossy(&out.stdout),
        )
        .unwrap();
        let shipped = Config::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/{host}.toml")),
        )
        .unwrap();
        assert_eq!(
            converted, shipped,
            "configs/{host}.toml differs from the conversion"
        );
        let vs = &converted.services[0];
        assert_eq!(vs.sorry.as_ref().unwrap().address.to_string(), "10.1.1.75");
        let vi = &converted.vrrp_instances[0];
        assert_eq!(
            (vi.virtual_router_id, vi.auth_pass.as_deref()),
            (51, Some("1111"))
        );
    }
}

#[test]
fn what_cannot_be_expressed_is_listed_and_fails_unless_partial() {
    let dir = std::env::temp_dir().join(format!("lbt{}-import", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let main = dir.join("keepalived.conf");
    std::fs::write(
        &main,
        "global_defs {\n  router_id X\n  vrrp_strict\n}\ninclude conf.d/*.conf\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("conf.d/vs.conf"),
        "virtual_server 10.0.0.1 80 {\n  lb_algo lc\n  lb_kind NAT\n  real_server 10.0.0.2 80 {\n    HTTP_GET {\n      url { path / }\n    }\n  }\n  real_server 10.0.0.3 80 {\n    MISC_CHECK {\n      misc_path \"/bin/check 3\"\n      misc_dynamic\n    }\n  }\n  frobnicate 1\n}\n",
    )
    .unwrap();
    let out = agent()
        .arg("import-keepalived")
        .arg(&main)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "a partial conversion must not be written without --allow-partial"
    );
    for needle in [
        "keepalived.conf:3: not converted: `vrrp_strict`",
        "vs.conf:2: not converted: `lb_algo`",
        "vs.conf:3: not converted: `lb_kind`",
        "vs.conf:5: not converted: `HTTP_GET`",
        "vs.conf:15: not converted: `frobnicate`",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let out = agent()
        .arg("import-keepalived")
        .arg("--allow-partial")
        .arg(&main)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let c = Config::parse(Path::new("partial.toml"), &text).unwrap();
    assert_eq!(c.services[0].reals.len(), 2);
    assert!(
        text.contains("command = \"/bin/check 3\"") && text.contains("dynamic = true"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_accepts_the_shipped_hosts_and_rejects_errors() {
    for host in ["master", "backup", "static-dr"] {
        let path = format!("{}/../configs/{host}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = agent().args(["check-config", &path]).output().unwrap();
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = agent()
        .args(["check-config", "/nonexistent/lb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// What this session's VRRP and health work added to the importer: track scripts and
/// interfaces, gratuitous ARP settings, e-mail alerts, quorum notifiers — converted whole and
/// valid.
#[test]
fn tracking_garp_and_alerts_convert() {
    let dir = std::env::temp_dir().join(format!("lbt{}-imp", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        r#"
global_defs {
  notification_email { dba@example.com }
  smtp_server 127.0.0.1 2525
  router_id LB1
  vrrp_garp_lower_prio_repeat 2
  vrrp_higher_prio_send_advert
}
vrrp_script chk_mysql {
  script "/usr/bin/mariadb-admin ping"
  interval 2
  timeout 1
  weight -40
  rise 2
  fall 3
}
vrrp_instance VI_1 {
  state MASTER
  interface eth0
  virtual_router_id 51
  priority 150
  advert_int 1
  smtp_alert
  garp_master_delay 2
  garp_master_repeat 3
  garp_master_refresh 30
  garp_lower_prio_delay 4
  lower_prio_no_advert true
  track_interface {
    eth0
    eth1 weight -20
  }
  track_script {
    chk_mysql
  }
  virtual_ipaddress {
    10.1.1.176
  }
}
virtual_server 10.1.1.176 3306 {
  quorum_up "/bin/true up"
  quorum_down "/bin/true down"
  smtp_alert
  real_server 10.1.1.113 3306 {
    TCP_CHECK {
      connect_timeout 1
    }
  }
}
"#,
    )
    .unwrap();
    let import = lb_agent::config::keepalived::import(&conf).unwrap();
    assert!(!import.is_partial(), "{:?}", import.findings);
    let cfg = import.config;
    let sc = cfg.vrrp_scripts[0].get_ref();
    assert_eq!(
        (sc.name.as_str(), sc.weight, sc.rise, sc.fall),
        ("chk_mysql", -40, 2, 3)
    );
    assert_eq!(sc.script, "/usr/bin/mariadb-admin ping");
    let vi = cfg.vrrp_instances[0].get_ref();
    assert!(vi.smtp_alert);
    assert_eq!(vi.garp_master_repeat, 3);
    assert_eq!(vi.garp_master_delay.0, std::time::Duration::from_secs(2));
    assert_eq!(vi.garp_master_refresh.0, std::time::Duration::from_secs(30));
    // Lower/higher-priority behaviour: the global default and the instance's own setting.
    assert_eq!(vi.garp_lower_prio_repeat, Some(2));
    assert_eq!(
        vi.garp_lower_prio_delay.map(|d| d.0),
        Some(std::time::Duration::from_secs(4))
    );
    assert!(vi.lower_prio_no_advert && vi.higher_prio_send_advert);
    assert_eq!(vi.track_interface.len(), 2);
    assert_eq!(vi.track_interface[1].weight, Some(-20));
    assert_eq!(vi.track_script[0].name, "chk_mysql");
    let vs = cfg.virtual_servers[0].get_ref();
    assert_eq!(vs.quorum_down.as_deref(), Some("/bin/true down"));
    assert!(vs.smtp_alert);
    // What it writes is a valid configuration.
    let text = toml::to_string(&cfg).unwrap();
    lb_agent::config::Config::parse(std::path::Path::new("imported.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn references_to_unconverted_blocks_are_dropped_and_the_output_validates() {
    let dir = std::env::temp_dir().join(format!("lbt{}-dangling", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let main = dir.join("keepalived.conf");
    // keepalived accepts all of this (dropping what it cannot use with a warning): a
    // local-part address without an SMTP server, a script without a command tracked by an
    // instance, an instance without a name, and a group naming an instance that does not exist.
    std::fs::write(
        &main,
        "global_defs {\n  notification_email {\n    acassen\n  }\n}\n\
         vrrp_script chk_gone {\n  interval 2\n  weight 10\n}\n\
         vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  priority 100\n  \
         track_script {\n    chk_gone\n  }\n  virtual_ipaddress {\n    10.0.0.100\n  }\n}\n\
         vrrp_instance {\n  interface eth0\n}\n\
         vrrp_sync_group G {\n  group {\n    VI_1\n    VI_2\n  }\n}\n",
    )
    .unwrap();
    let out = agent()
        .arg("import-keepalived")
        .arg("--allow-partial")
        .arg(&main)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "keepalived.conf:6: not converted: `vrrp_script`: a vrrp_script needs a `script`",
        "keepalived.conf:15: not converted: `chk_gone`: dropped: its vrrp_script was not converted",
        "keepalived.conf:21: not converted: `vrrp_instance`",
        "keepalived.conf:25: not converted: `group`: VI_2 dropped from the group",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let c =
        Config::parse(Path::new("partial.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(c.vrrp_instances[0].track_scripts.is_empty(), "{text}");
    assert!(
        c.warnings.iter().any(|w| w.contains("smtp_server")),
        "e-mail without a server is kept and flagged: {:?}",
        c.warnings
    );
    let _ = std::fs::remove_dir_all(&dir);
}
