//! Measurement at the remote host: an AF_PACKET socket inside its network namespace, with kernel
//! receive timestamps, attributing each frame to a flow; optionally every frame also goes to a
//! pcap file.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nemflow_testkit::RawSocket;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::TsResolution;

use crate::series::Sample;

/// Decides which flow a captured frame belongs to (`None`: not measured).
pub type Classifier = Box<dyn Fn(&[u8]) -> Option<usize> + Send>;

/// A capture running on its own thread until [`Capture::finish`].
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Captured, String>>,
}

/// What a capture saw.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Frames attributed to flows, in arrival order.
    pub samples: Vec<Sample>,
    /// Frames the kernel dropped because the capture fell behind: a measurement with drops
    /// under-counts and is not to be trusted.
    pub dropped: u64,
}

impl Capture {
    /// Starts capturing on `iface` inside `netns`.
    pub fn start(
        netns: &str,
        iface: &str,
        classify: Classifier,
        pcap: Option<&Path>,
    ) -> Result<Self, String> {
        let sock = RawSocket::bind_in(netns, iface)?;
        sock.enable_timestamps()?;
        // Seconds of traffic, so a capture thread that is descheduled for a while loses nothing.
        sock.set_recv_buffer(256 << 20)?;
        sock.drops()?; // reset the counter
        let mut writer = match pcap {
            Some(path) => {
                let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let header = PcapHeader {
                    ts_resolution: TsResolution::NanoSecond,
                    snaplen: 65535,
                    ..PcapHeader::default()
                };
                Some(
                    PcapWriter::with_header(BufWriter::new(file), header)
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut samples = Vec::with_capacity(1 << 20);
            while !flag.load(Ordering::Relaxed) {
                let Some((n, t_ns)) = sock.recv_timestamped(Duration::from_millis(50), &mut buf)
                else {
                    continue;
                };
                let frame = &buf[..n];
                if let Some(w) = writer.as_mut() {
                    let ts = Duration::from_nanos(t_ns);
                    w.write_packet(&PcapPacket::new(ts, n as u32, frame))
                        .map_err(|e| e.to_string())?;
                }
                if let Some(flow) = classify(frame) {
                    samples.push(Sample {
                        t_ns,
                        flow,
                        len: n as u32,
                    });
                }
            }
            let dropped = sock.drops()?;
            Ok(Captured { samples, dropped })
        });
        Ok(Self { stop, thread })
    }

    /// Stops and returns what was captured.
    pub fn finish(self) -> Result<Captured, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "capture thread panicked".to_string())?
    }
}

/// The UDP destination port of an IPv4/UDP frame without options (what experiments classify by).
pub fn udp_dst_port(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 42 && frame[12..14] == [0x08, 0x00] && frame[14] == 0x45 && frame[23] == 17)
        .then(|| u16::from_be_bytes([frame[36], frame[37]]))
}

/// The UDP source port of an IPv4/UDP frame without options.
pub fn udp_src_port(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 42 && frame[12..14] == [0x08, 0x00] && frame[14] == 0x45 && frame[23] == 17)
        .then(|| u16::from_be_bytes([frame[34], frame[35]]))
}
