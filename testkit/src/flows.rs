//! Playing the flow manager in tests: make a flow's two channels, keep the application's ends,
//! hand the driver's fds over.

use std::os::fd::OwnedFd;

use nemflow_rbuf::{create, rmm, tmm, ChannelSpec};

/// The application's ends of a flow's channels.
#[derive(Debug)]
pub struct AppEnds {
    /// Transmit (TMM producer).
    pub tx: tmm::Producer,
    /// Receive (RMM consumer), with its empty buffers already posted.
    pub rx: rmm::Consumer,
}

/// A channel geometry for tests: `slots` iorecs of up to 2048 bytes.
pub fn spec(slots: u32) -> ChannelSpec {
    let data_bytes = (u64::from(slots) * 2048).div_ceil(4096) * 4096;
    ChannelSpec {
        data_bytes,
        slots,
        max_packet_bytes: 2048,
        hugetlb: false,
    }
}

/// Creates both channels of a flow. Returns the app's ends and the eight fds the driver's
/// `InstallFlow` takes (transmit channel with a read-only data fd, then receive channel).
pub fn flow_channels(
    tx_spec: &ChannelSpec,
    rx_spec: &ChannelSpec,
) -> Result<(AppEnds, Vec<OwnedFd>), nemflow_rbuf::Error> {
    let tx_fds = create(tx_spec)?;
    let rx_fds = create(rx_spec)?;
    let tx = tmm::Producer::attach(tx_spec, tx_fds.try_clone()?)?;
    let mut rx = rmm::Consumer::attach(rx_spec, rx_fds.with_read_only_data()?)?;
    rx.post_free()?;
    let mut driver = tx_fds.with_read_only_data()?.into_vec();
    driver.extend(rx_fds.into_vec());
    Ok((AppEnds { tx, rx }, driver))
}
