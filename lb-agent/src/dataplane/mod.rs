//! The XDP data plane as userspace sees it: the embedded object, loading and attaching, pinned
//! state for hitless restarts, and the map writer.
//!
//! Pinned mode (`load_pinned`): the maps and the XDP link live under a bpffs directory. A new
//! agent finds them there, reuses the maps (connections, counters, tables survive), and swaps
//! its program into the existing link atomically: traffic never stops while the agent is
//! down or restarting. Only `shutdown` (SIGTERM, `run --cleanup`) detaches and unpins.

mod pin;
pub mod reconcile;
mod writer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use xdp_ebpf::maps::{ALL_MAPS, BENCH_NEXT_FLOW, PROGRAM_NAME};

pub use pin::ensure_bpffs;
pub use writer::{Adopted, Counters, MapWriter};

/// `CLOCK_MONOTONIC` now, in nanoseconds: the data plane's clock (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The connection table's clock now: `CLOCK_MONOTONIC` in ticks (`xdp_ebpf::maps::TICK_SHIFT`),
/// the clock a restarted agent continues.
pub fn clock_tick() -> u32 {
    xdp_ebpf::maps::tick_of_ns(monotonic_ns())
}

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp.o"));

/// The pinned XDP link's name in the pin directory.
const LINK_PIN: &str = "link";
/// The pinned program (the one the link runs), for inspection with bpftool.
const PROG_PIN: &str = "prog";

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Skb,
    /// Swapped into the link a previous agent pinned (same interface and mode as then).
    Adopted,
}

/// A loaded XDP program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// A link this process attached without pinning (tests, unpinned runs).
    link: Option<XdpLinkId>,
    pin_dir: Option<PathBuf>,
    adopted: bool,
}

/// How to load the object: map sizes that differ from the object's defaults (tests use small
/// ones), and the benchmark switch.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub max_entries: Vec<(&'static str, u32)>,
    /// Benchmarks only: after each run the program advances the frame's flow (see
    /// `LB_BENCH_NEXT_FLOW` in the XDP program). Never set in production.
    pub bench_next_flow: bool,
}

fn is_root() -> bool {
    // SAFETY: no arguments, no failure mode.
    unsafe { libc::geteuid() == 0 }
}

impl Dataplane {
    /// Loads the embedded object into the kernel (verifier included) with fresh maps. Nothing
    /// is attached.
    pub fn load(options: &LoadOptions) -> Result<Dataplane> {
        Self::load_with(XDP_OBJECT, options, None)
    }

    /// Loads the embedded object with its maps pinned under `pin_dir` (bpffs, mounted if
    /// missing): maps already pinned there are reused, with everything they hold.
    pub fn load_pinned(pin_dir: &Path, options: &LoadOptions) -> Result<Dataplane> {
        pin::ensure_bpffs(pin_dir)?;
        Self::load_with(XDP_OBJECT, options, Some(pin_dir))
    }

    fn load_with(
        object: &[u8],
        options: &LoadOptions,
        pin_dir: Option<&Path>,
    ) -> Result<Dataplane> {
        if object.is_empty() {
            bail!(
                "this lb-agent was built without the XDP program: run `cargo xtask build-ebpf`, \
                 then rebuild lb-agent"
            );
        }
        let adopted = pin_dir.is_some_and(|d| d.join(LINK_PIN).exists());
        let mut loader = EbpfLoader::new();
        for (name, n) in &options.max_entries {
            loader.map_max_entries(name, *n);
        }
        if options.bench_next_flow {
            loader.override_global(BENCH_NEXT_FLOW, &1u32, true);
        }
        if let Some(dir) = pin_dir {
            for name in ALL_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(object).map_err(|e| {
            if !is_root() {
                anyhow!("loading the XDP program needs root (or CAP_BPF + CAP_NET_ADMIN): {e}")
            } else {
                anyhow!(e).context("loading the XDP object")
            }
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the XDP object has no program {PROGRAM_NAME}"))?
            .try_into()?;
        prog.load().context("the kernel rejected the XDP program")?;
        Ok(Dataplane {
            ebpf,
            link: None,
            pin_dir: pin_dir.map(Path::to_path_buf),
            adopted,
        })
    }

    /// Whether a previous agent's pinned data plane was found (and its maps reused).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in load_with")
    }

    fn program_mut(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program"))?
            .try_into()?)
    }

    /// Attaches to `iface`. `mode` None = driver mode, falling back to skb mode with a log line.
    /// In pinned mode, a link left by a previous agent gets this program atomically instead;
    /// a new link is pinned.
    pub fn attach(&mut self, iface: &str, mode: Option<AttachMode>) -> Result<AttachMode> {
        let got = self.attach_link(iface, mode)?;
        if let Some(dir) = self.pin_dir.clone() {
            let path = dir.join(PROG_PIN);
            let _ = std::fs::remove_file(&path);
            self.program_mut()?
                .pin(&path)
                .map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
        }
        Ok(got)
    }

    fn attach_link(&mut self, iface: &str, mode: Option<AttachMode>) -> Result<AttachMode> {
        let link_pin = self.pin_dir.as_ref().map(|d| d.join(LINK_PIN));
        if let Some(path) = link_pin.as_ref().filter(|p| p.exists()) {
            let pinned = PinnedLink::from_pin(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|e: LinkError| anyhow!(e))?;
            let id = self
                .program_mut()?
                .attach_to_link(link)
                .context("swapping the program into the pinned link")?;
            self.link = Some(id);
            return Ok(AttachMode::Adopted);
        }
        let index = crate::netlink::if_index(iface)?;
        let prog = self.program_mut()?;
        let attempt = |prog: &mut Xdp, m: AttachMode| {
            let flags = if m == AttachMode::Skb {
                XdpMode::Skb
            } else {
                XdpMode::Driver
            };
            prog.attach_to_if_index(index, flags)
        };
        let (id, got) = match mode {
            Some(m) => (
                attempt(prog, m)
                    .with_context(|| format!("attaching XDP to {iface} in {m:?} mode"))?,
                m,
            ),
            None => match attempt(prog, AttachMode::Driver) {
                Ok(id) => (id, AttachMode::Driver),
                Err(e) => {
                    tracing::warn!(interface = iface, error = %e, "driver-mode XDP failed, falling back to skb mode");
                    let id = attempt(prog, AttachMode::Skb)
                        .with_context(|| format!("attaching XDP to {iface} in skb mode"))?;
                    (id, AttachMode::Skb)
                }
            },
        };
        match link_pin {
            Some(path) => {
                let link = prog.take_link(id)?;
                let fd = FdLink::try_from(link)
                    .map_err(|e| anyhow!("the kernel gave no bpf_link to pin: {e}"))?;
                fd.pin(&path)
                    .map_err(|e| anyhow!("pinning {}: {e}", path.display()))?;
            }
            None => self.link = Some(id),
        }
        Ok(got)
    }

    /// Detaches from the interface and removes every pin: the data plane is gone for good.
    pub fn shutdown(&mut self) -> Result<()> {
        if let Some(id) = self.link.take() {
            self.program_mut()?.detach(id).context("detaching XDP")?;
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pinned(&dir)?;
        }
        Ok(())
    }

    pub fn maps(&mut self) -> MapWriter<'_> {
        MapWriter::new(&mut self.ebpf)
    }
}

/// Detaches a pinned data plane and removes its pins (`lb-agent run --cleanup`, and
/// `shutdown`). Nothing pinned is not an error.
pub fn remove_pinned(dir: &Path) -> Result<()> {
    let link = dir.join(LINK_PIN);
    if link.exists() {
        let pinned =
            PinnedLink::from_pin(&link).with_context(|| format!("opening {}", link.display()))?;
        // Unpinned and closed: the kernel detaches the program once no one holds the link.
        drop(
            pinned
                .unpin()
                .with_context(|| format!("unpinning {}", link.display()))?,
        );
    }
    pin::unpin_maps(
        dir,
        &[PROG_PIN].into_iter().chain(ALL_MAPS).collect::<Vec<_>>(),
    )
}
