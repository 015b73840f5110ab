//! Who may do what, from the `flowmgr` section of the configuration. Identity is the peer's
//! `SO_PEERCRED` uid, never anything a message says.

use std::collections::HashMap;

use nemflow_config::FlowMgr;
use nemflow_proto::app::{AppError, AppErrorKind};
use nemflow_proto::flow::ethertype;

/// The policy and each uid's current holdings.
#[derive(Debug)]
pub struct Policy {
    allowed_uids: Vec<u32>,
    privileged_port_uids: Vec<u32>,
    max_flows_per_uid: u32,
    max_channel_bytes_per_uid: u64,
    usage: HashMap<u32, Usage>,
}

/// What one uid holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Flows (including ones being set up).
    pub flows: u32,
    /// Channel memory, bytes.
    pub channel_bytes: u64,
}

impl Policy {
    /// The policy of a configuration.
    pub fn new(cfg: &FlowMgr) -> Self {
        Self {
            allowed_uids: cfg.allowed_uids.clone(),
            privileged_port_uids: cfg.privileged_port_uids.clone(),
            max_flows_per_uid: cfg.max_flows_per_uid,
            max_channel_bytes_per_uid: cfg.max_channel_bytes_per_uid,
            usage: HashMap::new(),
        }
    }

    /// Whether `uid` may use the flow manager at all (root always may).
    pub fn check_connect(&self, uid: u32) -> Result<(), AppError> {
        if uid == 0 || self.allowed_uids.is_empty() || self.allowed_uids.contains(&uid) {
            Ok(())
        } else {
            Err(AppError::new(
                AppErrorKind::PermissionDenied,
                format!("uid {uid} may not use the flow manager (not in flowmgr.allowed_uids)"),
            ))
        }
    }

    fn privileged(&self, uid: u32) -> bool {
        uid == 0 || self.privileged_port_uids.contains(&uid)
    }

    /// Whether `uid` may bind `port` (below 1024 only root or the allow-list).
    pub fn check_port(&self, uid: u32, proto: &str, port: u16) -> Result<(), AppError> {
        if port != 0 && port < 1024 && !self.privileged(uid) {
            return Err(AppError::new(
                AppErrorKind::PermissionDenied,
                format!(
                    "{proto} port {port} is privileged: only root or flowmgr.privileged_port_uids may bind ports below 1024 (uid {uid})"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `uid` may open a raw flow of `et` (like `AF_PACKET`: root or the allow-list,
    /// and never the host's own ethertypes).
    pub fn check_raw(&self, uid: u32, et: u16) -> Result<(), AppError> {
        if et < 0x0600 || [ethertype::IPV4, ethertype::ARP, ethertype::VLAN].contains(&et) {
            return Err(AppError::new(
                AppErrorKind::Invalid,
                format!(
                    "ethertype {et:#06x} cannot be a raw flow (IPv4, ARP and VLAN belong to the host; values below 0x0600 are lengths)"
                ),
            ));
        }
        if !self.privileged(uid) {
            return Err(AppError::new(
                AppErrorKind::PermissionDenied,
                format!("raw flows need root or flowmgr.privileged_port_uids (uid {uid})"),
            ));
        }
        Ok(())
    }

    /// Reserves one flow of `bytes` channel memory for `uid`, within its limits.
    pub fn reserve(&mut self, uid: u32, bytes: u64) -> Result<(), AppError> {
        let u = self.usage.entry(uid).or_default();
        if u.flows >= self.max_flows_per_uid {
            return Err(AppError::new(
                AppErrorKind::NoBufferSpace,
                format!(
                    "uid {uid} holds {} flows, the limit (flowmgr.max_flows_per_uid)",
                    u.flows
                ),
            ));
        }
        if u.channel_bytes.saturating_add(bytes) > self.max_channel_bytes_per_uid {
            return Err(AppError::new(
                AppErrorKind::NoBufferSpace,
                format!(
                    "uid {uid} holds {} bytes of channels; {bytes} more would pass the limit of {} (flowmgr.max_channel_bytes_per_uid)",
                    u.channel_bytes, self.max_channel_bytes_per_uid
                ),
            ));
        }
        u.flows += 1;
        u.channel_bytes += bytes;
        Ok(())
    }

    /// Gives back what [`reserve`](Self::reserve) took.
    pub fn release(&mut self, uid: u32, bytes: u64) {
        if let Some(u) = self.usage.get_mut(&uid) {
            u.flows = u.flows.saturating_sub(1);
            u.channel_bytes = u.channel_bytes.saturating_sub(bytes);
            if u.flows == 0 {
                self.usage.remove(&uid);
            }
        }
    }

    /// What `uid` holds now.
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.get(&uid).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_privileges() {
        let cfg = FlowMgr {
            allowed_uids: vec![1000],
            privileged_port_uids: vec![1001],
            max_flows_per_uid: 2,
            max_channel_bytes_per_uid: 100,
            ..FlowMgr::default()
        };
        let mut p = Policy::new(&cfg);
        assert!(p.check_connect(0).is_ok());
        assert!(p.check_connect(1000).is_ok());
        assert_eq!(
            p.check_connect(1002).unwrap_err().kind,
            AppErrorKind::PermissionDenied
        );
        assert!(p.check_port(1000, "udp", 80).is_err());
        assert!(p.check_port(1001, "udp", 80).is_ok());
        assert!(p.check_port(1000, "udp", 1024).is_ok());
        assert!(p.check_raw(0, ethertype::ARP).is_err());
        assert!(p.check_raw(1000, 0x88b5).is_err());
        assert!(p.check_raw(0, 0x88b5).is_ok());
        p.reserve(1000, 60).unwrap();
        assert_eq!(
            p.reserve(1000, 60).unwrap_err().kind,
            AppErrorKind::NoBufferSpace
        );
        p.reserve(1000, 40).unwrap();
        assert!(p.reserve(1000, 0).is_err(), "flow limit");
        p.release(1000, 60);
        p.release(1000, 40);
        assert_eq!(p.usage(1000), Usage::default());
    }
}
