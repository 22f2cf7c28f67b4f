//! The single-frame fixture table, each case on fresh maps in the kernel.

use bpf_tests::{
    fixtures::{Expect, To, single},
    provision::*,
};
use xdp_ebpf::flow_hash;

#[test]
fn single_frame_fixtures() {
    let fixtures = single::fixtures();
    assert!(fixtures.len() > 100, "the table lost its cases");
    let mut failures = Vec::new();
    for fx in &fixtures {
        let mut h = Harness::new();
        let (action, out) = h.run(&fx.frame);
        let problem = match &fx.expect {
            Expect::Pass(reason) => {
                let counted = h.pass_count(*reason);
                if action != XDP_PASS {
                    Some(format!("action {action}, want XDP_PASS"))
                } else if out != fx.frame {
                    Some("a passed frame was modified".to_string())
                } else if counted != 1 {
                    Some(format!(
                        "pass reason {reason:?} counted {counted} times, want 1"
                    ))
                } else {
                    None
                }
            }
            Expect::Tx(to) => {
                let real = match to {
                    To::Flow(service, key) => h.predicted(service, flow_hash(key)),
                    To::Real(addr) => h.real_id(addr),
                };
                let mac = h.state.reals[&real].1.mac.octets;
                let mut want = fx.frame.clone();
                want[0..6].copy_from_slice(&mac);
                want[6..12].copy_from_slice(&LB_MAC);
                if action != XDP_TX {
                    Some(format!("action {action}, want XDP_TX to real {real}"))
                } else if out != want {
                    Some(format!(
                        "output differs: got {:02x?}\nwant {:02x?}",
                        &out[..12.min(out.len())],
                        &want[..12]
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", fx.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}
