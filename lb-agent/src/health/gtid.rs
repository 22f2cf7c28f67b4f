//! GTID positions of MariaDB (`domain-server-seq`, one per domain: `0-1-100,1-2-7`) and GTID
//! sets of MySQL (`uuid:1-5:7,uuid2:1-3`, MySQL 8.4 tags as `uuid:tag:1-5`), and the one
//! question failback asks of them: has this server executed everything in that position?

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtids {
    /// MariaDB: per replication domain, the (server id, sequence number) of the last event
    /// group. Sequence numbers grow monotonically within a domain, whoever wrote them.
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: per source (uuid, or uuid:tag), the executed transaction numbers as sorted,
    /// disjoint, inclusive intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

impl Gtids {
    /// Reads either format (MySQL's has ':' in it); whitespace and newlines (MySQL prints
    /// long sets over several lines) are ignored. An empty string is an empty position.
    pub fn parse(s: &str) -> Result<Gtids, String> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if s.contains(':') {
            parse_mysql(&s)
        } else {
            parse_mariadb(&s)
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Gtids::MariaDb(m) => m.is_empty(),
            Gtids::MySql(m) => m.is_empty(),
        }
    }

    /// Whether every transaction of `other` is in `self`. An empty `other` is contained in
    /// anything; positions of different servers' kinds are never comparable (false).
    pub fn contains(&self, other: &Gtids) -> bool {
        if other.is_empty() {
            return true;
        }
        match (self, other) {
            (Gtids::MariaDb(mine), Gtids::MariaDb(theirs)) => theirs
                .iter()
                .all(|(d, (_, seq))| mine.get(d).is_some_and(|(_, my_seq)| my_seq >= seq)),
            (Gtids::MySql(mine), Gtids::MySql(theirs)) => theirs.iter().all(|(src, ivs)| {
                let Some(my) = mine.get(src) else {
                    return false;
                };
                ivs.iter()
                    .all(|&(a, b)| my.iter().any(|&(x, y)| x <= a && b <= y))
            }),
            _ => false,
        }
    }
}

impl Gtids {
    /// `self` without the transactions of `origin` (MariaDB: a `server_id`, the positions
    /// whose last GTID it wrote; MySQL: a `server_uuid`, its own and its tagged sets). An
    /// empty origin removes nothing.
    pub fn without_origin(mut self, origin: &str) -> Gtids {
        if origin.is_empty() {
            return self;
        }
        match &mut self {
            Gtids::MariaDb(m) => m.retain(|_, (srv, _)| srv.to_string() != origin),
            Gtids::MySql(m) => {
                let origin = origin.to_ascii_lowercase();
                m.retain(|src, _| src.split(':').next() != Some(origin.as_str()))
            }
        }
        self
    }

    /// What `self` has that `other` lacks, written back in the servers' own format: for
    /// MariaDB the domains where `self` is further (its last GTID there), for MySQL the
    /// intervals of `self` not inside one of `other`'s. The name of an errant transaction
    /// that stays the same while the server goes on replicating other domains. Empty when
    /// `other` contains `self`.
    pub fn beyond(&self, other: &Gtids) -> String {
        match (self, other) {
            (Gtids::MariaDb(mine), Gtids::MariaDb(theirs)) => mine
                .iter()
                .filter(|(d, (_, seq))| theirs.get(d).is_none_or(|(_, t)| t < seq))
                .map(|(d, (srv, seq))| format!("{d}-{srv}-{seq}"))
                .collect::<Vec<_>>()
                .join(","),
            (Gtids::MySql(mine), Gtids::MySql(theirs)) => mine
                .iter()
                .filter_map(|(src, ivs)| {
                    let outside: Vec<String> = ivs
                        .iter()
                        .filter(|&&(a, b)| {
                            !theirs
                                .get(src)
                                .is_some_and(|t| t.iter().any(|&(x, y)| x <= a && b <= y))
                        })
                        .map(|&(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    (!outside.is_empty()).then(|| format!("{src}:{}", outside.join(":")))
                })
                .collect::<Vec<_>>()
                .join(","),
            // Different kinds: nothing in common, so all of `self`.
            (Gtids::MariaDb(_), Gtids::MySql(_)) => {
                self.beyond(&Gtids::MariaDb(Default::default()))
            }
            (Gtids::MySql(_), Gtids::MariaDb(_)) => self.beyond(&Gtids::MySql(Default::default())),
        }
    }
}

fn parse_mariadb(s: &str) -> Result<Gtids, String> {
    let mut out = BTreeMap::new();
    for g in s.split(',').filter(|g| !g.is_empty()) {
        let bad = || format!("{g:?} is not a MariaDB GTID (domain-server-sequence)");
        let mut parts = g.split('-');
        let (Some(d), Some(srv), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let domain: u32 = d.parse().map_err(|_| bad())?;
        let server: u32 = srv.parse().map_err(|_| bad())?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if out.insert(domain, (server, seq)).is_some() {
            return Err(format!("domain {domain} appears twice in {s:?}"));
        }
    }
    Ok(Gtids::MariaDb(out))
}

fn parse_mysql(s: &str) -> Result<Gtids, String> {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for set in s.split(',').filter(|g| !g.is_empty()) {
        let bad = || format!("{set:?} is not a MySQL GTID set (uuid:interval[:interval...])");
        let mut parts = set.split(':');
        let uuid = parts.next().ok_or_else(bad)?.to_ascii_lowercase();
        if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(bad());
        }
        // A tag applies to the intervals after it, until the next tag.
        let mut key = uuid.clone();
        for p in parts {
            if p.starts_with(|c: char| c.is_ascii_digit()) {
                let (a, b) = match p.split_once('-') {
                    Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
                    None => {
                        let n: u64 = p.parse().map_err(|_| bad())?;
                        (n, n)
                    }
                };
                if a == 0 || b < a {
                    return Err(bad());
                }
                out.entry(key.clone()).or_default().push((a, b));
            } else {
                key = format!("{uuid}:{}", p.to_ascii_lowercase());
            }
        }
    }
    for ivs in out.values_mut() {
        ivs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
        for &(a, b) in ivs.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *ivs = merged;
    }
    Ok(Gtids::MySql(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Gtids {
        Gtids::parse(s).unwrap()
    }

    #[test]
    fn beyond_names_what_the_other_lacks() {
        let cases = [
            // (mine, theirs, beyond)
            ("1-1-16,2-2-130", "1-1-15,2-2-1600", "1-1-16"),
            ("1-1-15,2-2-1600", "1-1-15,2-2-1600", ""),
            ("0-1-5,3-1-2", "0-1-9", "3-1-2"),
            (
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-20",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-19",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-20",
            ),
            (
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:7",
            ),
            ("0-1-5", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1", "0-1-5"),
        ];
        for (mine, theirs, want) in cases {
            assert_eq!(g(mine).beyond(&g(theirs)), want, "{mine} beyond {theirs}");
        }
    }

    #[test]
    fn mariadb_positions() {
        let cases = [
            // (executed, wanted, contained)
            ("0-1-100", "0-2-100", true),
            ("0-1-100", "0-2-101", false),
            ("0-1-100,1-2-5", "1-2-5", true),
            ("0-1-100", "1-2-5", false),
            ("0-1-100", "", true),
            ("", "0-1-1", false),
            ("0-2-7,0-1-0", "", false),
        ];
        for (mine, theirs, want) in cases {
            match (Gtids::parse(mine), Gtids::parse(theirs)) {
                (Ok(a), Ok(b)) => assert_eq!(a.contains(&b), want, "{mine} ⊇ {theirs}"),
                (Err(_), _) => assert_eq!(mine, "0-2-7,0-1-0", "a repeated domain is refused"),
                (_, Err(e)) => panic!("{e}"),
            }
        }
        for bad in ["0-1", "0-1-2-3", "a-1-2", "0--2", "-1-2"] {
            assert!(Gtids::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mysql_sets() {
        let u1 = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let u2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let a = g(&format!("{u1}:1-5:7-9,\n{u2}:1-3"));
        assert!(a.contains(&g(&format!("{u1}:2-4"))));
        assert!(a.contains(&g(&format!("{u1}:7:9,{u2}:3"))));
        assert!(!a.contains(&g(&format!("{u1}:5-7"))), "6 is missing");
        assert!(!a.contains(&g(&format!("{u2}:4"))));
        assert!(!a.contains(&g("5e11fa47-71ca-11e1-9e33-c80aa9429562:1")));
        // Adjacent intervals merge: 1-5 and 6-9 cover 4-8.
        assert!(g(&format!("{u1}:1-5,{u1}:6-9")).contains(&g(&format!("{u1}:4-8"))));
        // Tags (MySQL 8.4) are sources of their own.
        let t = g(&format!("{u1}:1-3:audit:1-2"));
        assert!(t.contains(&g(&format!("{u1}:audit:2"))));
        assert!(!t.contains(&g(&format!("{u1}:audit:3"))));
        // The two kinds never compare.
        assert!(!a.contains(&g("0-1-1")));
        for bad in [
            format!("{u1}:0"),
            format!("{u1}:5-3"),
            "zz:1".to_string(),
            format!("{u1}:1-x"),
        ] {
            assert!(Gtids::parse(&bad).is_err(), "{bad}");
        }
    }
}
