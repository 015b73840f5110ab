//! An ethdev port with one receive and one transmit queue.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use dpdk_sys::rte_mbuf;

use super::{rte_try, DpdkError, Eal, Mbuf, Mempool};
use crate::port::PortStats;

/// Frames moved per call into the PMD.
const MAX_BURST: usize = 64;

/// How to set a port up.
#[derive(Debug, Clone, Copy)]
pub struct PortConf {
    /// Receive descriptors (DPDK may adjust to the device's limits).
    pub rx_desc: u16,
    /// Transmit descriptors.
    pub tx_desc: u16,
    /// MTU (IP packet size; the frame is 14 bytes larger).
    pub mtu: u16,
    /// MAC address to give the port; `None` keeps the device's own.
    pub mac: Option<[u8; 6]>,
}

impl Default for PortConf {
    fn default() -> Self {
        Self {
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: 1500,
            mac: None,
        }
    }
}

/// Link state as the PMD reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// A started ethdev port, queue 0 for receive and transmit. Stopped and closed on drop.
#[derive(Debug)]
pub struct EthPort<'eal> {
    id: u16,
    name: String,
    mac: [u8; 6],
    pool: Mempool<'eal>,
    /// Where the link state is read when the PMD cannot see it (net_tap's kernel side moved
    /// into another namespace).
    kernel_link: Option<crate::tap_peer::LinkWatch>,
    _eal: PhantomData<&'eal Eal>,
}

impl<'eal> EthPort<'eal> {
    /// Finds the port DPDK probed under `name` (vdev name or PCI address), configures one
    /// queue pair fed by `pool`, and starts it.
    pub fn open(
        _eal: &'eal Eal,
        name: &str,
        conf: &PortConf,
        pool: &Mempool<'eal>,
    ) -> Result<Self, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.into()))?;
        let mut id = 0u16;
        // SAFETY: valid C string and out-pointer; returns <0 if there is no such port.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret < 0 {
            return Err(DpdkError::NoSuchPort(name.into()));
        }
        let mut port = Self {
            id,
            name: name.into(),
            mac: [0; 6],
            pool: *pool,
            kernel_link: None,
            _eal: PhantomData,
        };
        port.configure(conf, pool)?;
        Ok(port)
    }

    fn configure(&mut self, conf: &PortConf, pool: &Mempool<'eal>) -> Result<(), DpdkError> {
        let id = self.id;
        let name = self.name.clone();
        // SAFETY: rte_eth_conf is a plain C struct for which all-zero is DPDK's default config.
        let eth_conf: dpdk_sys::rte_eth_conf = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: the port id came from DPDK; the conf pointer is valid for the call.
        rte_try!("rte_eth_dev_configure", &name, unsafe {
            dpdk_sys::rte_eth_dev_configure(id, 1, 1, &eth_conf)
        })?;
        let (mut rx, mut tx) = (conf.rx_desc, conf.tx_desc);
        // SAFETY: valid port and out-pointers.
        rte_try!("rte_eth_dev_adjust_nb_rx_tx_desc", &name, unsafe {
            dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx, &mut tx)
        })?;
        // SAFETY: valid port; returns the NUMA socket or -1 (SOCKET_ID_ANY), both accepted below.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(u32::MAX);
        // SAFETY: configured port; NULL rx_conf selects the PMD default; the pool outlives the
        // port (pools live until EAL cleanup).
        rte_try!("rte_eth_rx_queue_setup", &name, unsafe {
            dpdk_sys::rte_eth_rx_queue_setup(id, 0, rx, socket, std::ptr::null(), pool.as_ptr())
        })?;
        // SAFETY: configured port; NULL tx_conf selects the PMD default.
        rte_try!("rte_eth_tx_queue_setup", &name, unsafe {
            dpdk_sys::rte_eth_tx_queue_setup(id, 0, tx, socket, std::ptr::null())
        })?;
        // SAFETY: valid port. Some PMDs cannot change the MTU; that is not fatal.
        let mtu = unsafe { dpdk_sys::rte_eth_dev_set_mtu(id, conf.mtu) };
        if mtu < 0 {
            tracing::debug!(port = %name, "cannot set MTU {}: {}", conf.mtu, super::strerror(-mtu));
        }
        if let Some(bytes) = conf.mac {
            let mut addr = dpdk_sys::rte_ether_addr { addr_bytes: bytes };
            // SAFETY: valid port and a pointer to a valid address for the call.
            rte_try!("rte_eth_dev_default_mac_addr_set", &name, unsafe {
                dpdk_sys::rte_eth_dev_default_mac_addr_set(id, &mut addr)
            })?;
        }
        // SAFETY: valid, configured port.
        rte_try!("rte_eth_dev_start", &name, unsafe {
            dpdk_sys::rte_eth_dev_start(id)
        })?;
        let mut mac = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port and out-pointer.
        rte_try!("rte_eth_macaddr_get", &name, unsafe {
            dpdk_sys::rte_eth_macaddr_get(id, &mut mac)
        })?;
        self.mac = mac.addr_bytes;
        Ok(())
    }

    /// The DPDK port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The device name the port was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool receive buffers come from; transmit buffers are allocated from it too.
    pub fn pool(&self) -> Mempool<'eal> {
        self.pool
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Receives up to `max` frames into `out`; returns how many arrived.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf<'eal>>, max: usize) -> usize {
        let mut raw: [*mut rte_mbuf; MAX_BURST] = [std::ptr::null_mut(); MAX_BURST];
        let want = max.min(MAX_BURST) as u16;
        // SAFETY: started port, queue 0 exists; `raw` has room for `want` pointers. The PMD
        // hands us ownership of the `n` mbufs it writes.
        let n = unsafe { dpdk_sys::rte_eth_rx_burst(self.id, 0, raw.as_mut_ptr(), want) };
        for &m in &raw[..usize::from(n)] {
            if let Some(m) = NonNull::new(m) {
                // SAFETY: fresh from the PMD, owned by nobody else, from a pool of this EAL.
                out.push(unsafe { Mbuf::from_raw(m) });
            }
        }
        usize::from(n)
    }

    /// Transmits frames from the front of `frames`; those accepted by the PMD are removed
    /// (their ownership moved), the rest stay. Returns how many were accepted.
    pub fn tx_burst(&mut self, frames: &mut Vec<Mbuf<'eal>>) -> usize {
        let mut sent_total = 0;
        while sent_total < frames.len() {
            let chunk = &frames[sent_total..frames.len().min(sent_total + MAX_BURST)];
            let mut raw: [*mut rte_mbuf; MAX_BURST] = [std::ptr::null_mut(); MAX_BURST];
            for (slot, m) in raw.iter_mut().zip(chunk) {
                *slot = m.as_ptr();
            }
            // SAFETY: started port, queue 0; `raw` holds chunk.len() valid mbufs we own. The
            // PMD takes ownership of the first `n` (we forget them below), not of the rest.
            let n = unsafe {
                dpdk_sys::rte_eth_tx_burst(self.id, 0, raw.as_mut_ptr(), chunk.len() as u16)
            };
            sent_total += usize::from(n);
            if usize::from(n) < chunk.len() {
                break;
            }
        }
        for m in frames.drain(..sent_total) {
            let _ = m.into_raw();
        }
        sent_total
    }

    /// Reads the link state from `watch` from now on instead of the PMD (see
    /// [`crate::tap_peer::TapPeer::link_watch`]).
    pub fn set_kernel_link(&mut self, watch: crate::tap_peer::LinkWatch) {
        self.kernel_link = Some(watch);
    }

    /// The link state, without waiting.
    pub fn link(&self) -> LinkStatus {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port and out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut link) };
        let mut status = if ret < 0 {
            LinkStatus {
                up: false,
                speed_mbps: 0,
                full_duplex: false,
            }
        } else {
            LinkStatus {
                up: link.link_status() != 0,
                speed_mbps: link.link_speed,
                full_duplex: link.link_duplex() != 0,
            }
        };
        if let Some(up) = self.kernel_link.as_ref().and_then(|w| w.up()) {
            status.up = up;
        }
        status
    }

    /// Basic counters (`rte_eth_stats_get`).
    pub fn stats(&self) -> PortStats {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: valid port and out-pointer.
        if unsafe { dpdk_sys::rte_eth_stats_get(self.id, &mut s) } < 0 {
            return PortStats::default();
        }
        PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// Every extended counter the PMD offers, by name (`rte_eth_xstats_get`).
    pub fn xstats(&self) -> Vec<(String, u64)> {
        // SAFETY: NULL/0 asks for the number of counters.
        let n = unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, std::ptr::null_mut(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Vec::new();
        };
        let mut names = vec![dpdk_sys::rte_eth_xstat_name::default(); n];
        let mut values = vec![dpdk_sys::rte_eth_xstat::default(); n];
        // SAFETY: both arrays hold n elements, as we tell DPDK.
        let got_names =
            unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), n as u32) };
        // SAFETY: as above.
        let got = unsafe { dpdk_sys::rte_eth_xstats_get(self.id, values.as_mut_ptr(), n as u32) };
        if got_names < 0 || got < 0 {
            return Vec::new();
        }
        let count = n.min(got as usize).min(got_names as usize);
        values[..count]
            .iter()
            .filter_map(|v| {
                let name = names.get(usize::try_from(v.id).ok()?)?;
                // SAFETY: DPDK NUL-terminates names within their fixed-size array; `name` is
                // a plain array in our own memory.
                let text = unsafe { CStr::from_ptr(name.name.as_ptr()) };
                Some((text.to_string_lossy().into_owned(), v.value))
            })
            .collect()
    }
}

impl Drop for EthPort<'_> {
    fn drop(&mut self) {
        // SAFETY: valid port id; stop then close is DPDK's documented teardown. The EAL is still
        // running (we borrow it).
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.id);
            dpdk_sys::rte_eth_dev_close(self.id);
        }
    }
}
