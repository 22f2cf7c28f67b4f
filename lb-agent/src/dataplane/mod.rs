//! The XDP data plane as userspace sees it: the embedded object, loading and attaching, and
//! the map writer.

mod pin;
pub mod reconcile;
mod writer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use xdp_ebpf::maps::{ALL_MAPS, BENCH_NEXT_FLOW, PROGRAM_NAME};

pub use writer::{Counters, MapWriter};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp.o"));

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Skb,
}

/// A loaded XDP program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    link: Option<(XdpLinkId, String)>,
    pinned: Option<PathBuf>,
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

impl Dataplane {
    /// Loads the embedded object into the kernel (verifier included). Nothing is attached.
    pub fn load(options: &LoadOptions) -> Result<Dataplane> {
        Self::load_bytes(XDP_OBJECT, options)
    }

    pub fn load_bytes(object: &[u8], options: &LoadOptions) -> Result<Dataplane> {
        if object.is_empty() {
            bail!(
                "this lb-agent was built without the XDP program: run `cargo xtask build-ebpf`, \
                 then rebuild lb-agent"
            );
        }
        let mut loader = EbpfLoader::new();
        for (name, n) in &options.max_entries {
            loader.map_max_entries(name, *n);
        }
        if options.bench_next_flow {
            loader.override_global(BENCH_NEXT_FLOW, &1u32, true);
        }
        let mut ebpf = loader.load(object).map_err(|e| {
            if unsafe { libc::geteuid() } != 0 {
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
            pinned: None,
        })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in load_bytes")
    }

    /// Attaches to `iface`. `mode` None = driver mode, falling back to skb mode with a log line.
    pub fn attach(&mut self, iface: &str, mode: Option<AttachMode>) -> Result<AttachMode> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program"))?
            .try_into()?;
        let index = crate::netlink::if_index(iface)?;
        let attempt = |prog: &mut Xdp, m: AttachMode| {
            let flags = match m {
                AttachMode::Driver => XdpMode::Driver,
                AttachMode::Skb => XdpMode::Skb,
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
        self.link = Some((id, iface.to_string()));
        Ok(got)
    }

    /// Detaches from the interface (if attached) and removes pins (if pinned).
    pub fn detach(&mut self) -> Result<()> {
        if let Some((id, iface)) = self.link.take() {
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(PROGRAM_NAME)
                .ok_or_else(|| anyhow!("no program"))?
                .try_into()?;
            prog.detach(id)
                .with_context(|| format!("detaching XDP from {iface}"))?;
        }
        if let Some(dir) = self.pinned.take() {
            pin::unpin_maps(&dir, &ALL_MAPS)?;
        }
        Ok(())
    }

    /// Pins every map under `dir` (a bpffs directory; bpffs is mounted at /sys/fs/bpf if
    /// missing) so that `bpftool map dump pinned DIR/NAME` works.
    pub fn pin_maps(&mut self, dir: &Path) -> Result<()> {
        pin::ensure_bpffs(dir)?;
        for name in ALL_MAPS {
            let map = self
                .ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("no map {name}"))?;
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        self.pinned = Some(dir.to_path_buf());
        Ok(())
    }

    pub fn maps(&mut self) -> MapWriter<'_> {
        MapWriter::new(&mut self.ebpf)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!(error = %e, "detaching the data plane");
        }
    }
}
