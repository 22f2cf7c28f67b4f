//! Priority tracking with keepalived's weight semantics, without I/O: an instance's effective
//! priority is its configured one moved by the weights of tracked interfaces and scripts, and
//! a tracked item of weight 0 that is down puts the instance in Fault.

/// One tracked interface or script as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub weight: i32,
    pub up: bool,
}

/// The effective priority, and whether the instance must be in Fault.
/// Weight > 0 adds while up; weight < 0 adds (subtracts) while down. The result stays within
/// 1–254; an address owner (255) keeps 255 whatever its tracking says, as keepalived does.
pub fn effective(base: u8, tracked: impl IntoIterator<Item = Tracked>) -> (u8, bool) {
    let mut prio = base as i32;
    let mut fault = false;
    for t in tracked {
        match (t.weight, t.up) {
            (0, false) => fault = true,
            (w, true) if w > 0 => prio += w,
            (w, false) if w < 0 => prio += w,
            _ => {}
        }
    }
    if base == 255 {
        return (255, fault);
    }
    (prio.clamp(1, 254) as u8, fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(weight: i32, up: bool) -> Tracked {
        Tracked { weight, up }
    }

    #[test]
    fn keepalived_weight_semantics() {
        let cases: &[(u8, &[Tracked], (u8, bool))] = &[
            (100, &[], (100, false)),
            (100, &[t(0, true)], (100, false)),
            (100, &[t(0, false)], (100, true)),
            (100, &[t(-20, true)], (100, false)),
            (100, &[t(-20, false)], (80, false)),
            (100, &[t(10, true)], (110, false)),
            (100, &[t(10, false)], (100, false)),
            (100, &[t(10, true), t(-30, false), t(0, true)], (80, false)),
            // Bounded to 1–254.
            (200, &[t(100, true)], (254, false)),
            (10, &[t(-100, false)], (1, false)),
            // An owner stays an owner.
            (255, &[t(-50, false)], (255, false)),
            (255, &[t(0, false)], (255, true)),
        ];
        for (base, tracked, want) in cases {
            assert_eq!(
                effective(*base, tracked.iter().copied()),
                *want,
                "{base} {tracked:?}"
            );
        }
    }
}
