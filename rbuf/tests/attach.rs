//! Attaching checks every fd: anything but a sealed memfd of the expected size (or an eventfd
//! where one belongs) is refused with a clear, typed error. Also: the masters validate what the
//! (simulated, hostile) driver hands back, blocking waits time out, and the eventfd works in poll.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nemflow_rbuf::testing::{IndexWord, RawControl};
use nemflow_rbuf::{
    create, rmm, tmm, ChannelFds, ChannelSpec, Error, Extent, FdSource, FifoId, IoRec, IoRecError,
    RegionError,
};
use rustix::fs::{MemfdFlags, SealFlags};

fn spec() -> ChannelSpec {
    ChannelSpec {
        data_bytes: 1 << 16,
        slots: 16,
        max_packet_bytes: 1024,
        hugetlb: false,
    }
}

fn with_data(fds: &ChannelFds, data: OwnedFd) -> ChannelFds {
    let mut f = fds.try_clone().unwrap();
    f.data = data;
    f
}

fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[test]
fn refuses_what_is_not_a_sealed_memfd_of_the_right_size() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let all = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let cases: Vec<(&str, OwnedFd)> = vec![
        ("pipe", pipe_r),
        ("/dev/zero", zero.into()),
        ("unsealed memfd", memfd(spec.data_bytes, SealFlags::empty())),
        (
            "memfd without GROW seal",
            memfd(spec.data_bytes, SealFlags::SHRINK | SealFlags::SEAL),
        ),
        ("wrong-size memfd", memfd(spec.data_bytes / 2, all)),
    ];
    for (what, fd) in cases {
        let err = tmm::Consumer::attach(&spec, with_data(&fds, fd)).unwrap_err();
        println!("{what}: {err}");
        let ok = match what {
            "pipe" | "/dev/zero" => matches!(
                err,
                Error::Region(RegionError::NotMemfd { region: "data", .. })
            ),
            "wrong-size memfd" => matches!(
                err,
                Error::Region(RegionError::WrongSize { actual: 32768, .. })
            ),
            _ => matches!(err, Error::Region(RegionError::NotSealed { .. })),
        };
        assert!(ok, "{what}: {err:?}");
    }
    // A pipe where an eventfd belongs.
    let mut f = fds.try_clone().unwrap();
    f.cons_event = rustix::pipe::pipe().unwrap().0;
    assert!(matches!(
        tmm::Consumer::attach(&spec, f),
        Err(Error::Region(RegionError::NotEventfd { .. }))
    ));
    // A spec that does not match the channel: the control area has the wrong size.
    let other = ChannelSpec { slots: 128, ..spec };
    assert!(matches!(
        rmm::Producer::attach(&other, fds.try_clone().unwrap()),
        Err(Error::Region(RegionError::WrongSize {
            region: "control",
            ..
        }))
    ));
    // Same sizes, different packet limit: the header says so.
    let other = ChannelSpec {
        max_packet_bytes: 512,
        ..spec
    };
    assert!(matches!(
        rmm::Producer::attach(&other, fds.try_clone().unwrap()),
        Err(Error::Region(RegionError::BadHeader {
            field: "max_packet_bytes",
            ..
        }))
    ));
    // A writer side cannot map a read-only data fd.
    let ro = fds.with_read_only_data().unwrap();
    assert!(matches!(
        rmm::Producer::attach(&spec, ro),
        Err(Error::Os { op: "mmap", .. })
    ));
    // A bad spec is refused before anything is mapped.
    assert!(matches!(
        create(&ChannelSpec { slots: 12, ..spec }),
        Err(Error::InvalidSpec(_))
    ));
}

/// Fds from the trusted creator: the eventfds are recognised by `fstat` alone, the memfds are
/// still checked as closely as ever.
#[test]
fn fds_from_the_creator_are_checked_more_cheaply_but_still_checked() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let from = |f: ChannelFds| tmm::Consumer::attach_from(&spec, f, FdSource::Creator);
    from(fds.with_read_only_data().unwrap()).unwrap();
    rmm::Producer::attach_from(&spec, fds.try_clone().unwrap(), FdSource::Creator).unwrap();
    // Not an anonymous-inode file where an eventfd belongs: refused.
    let mut f = fds.try_clone().unwrap();
    f.prod_event = rustix::pipe::pipe().unwrap().0;
    assert!(matches!(
        from(f),
        Err(Error::Region(RegionError::NotEventfd {
            which: "producer event",
            ..
        }))
    ));
    let mut f = fds.try_clone().unwrap();
    f.cons_event = memfd(4096, SealFlags::empty());
    assert!(matches!(
        from(f),
        Err(Error::Region(RegionError::NotEventfd { .. }))
    ));
    // The memfd checks are the same as for anyone's fds.
    let all = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    assert!(matches!(
        from(with_data(&fds, memfd(spec.data_bytes / 2, all))),
        Err(Error::Region(RegionError::WrongSize { .. }))
    ));
    assert!(matches!(
        from(with_data(&fds, memfd(spec.data_bytes, SealFlags::empty()))),
        Err(Error::Region(RegionError::NotSealed { .. }))
    ));
    // An epoll fd shares the eventfds' anonymous inode: only the exact check tells them apart,
    // which is why fds from anyone but the creator get it.
    let mut f = fds.with_read_only_data().unwrap();
    f.cons_event =
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
    let epoll = f.cons_event.try_clone().unwrap();
    assert!(matches!(
        tmm::Consumer::attach(&spec, f),
        Err(Error::Region(RegionError::NotEventfd { .. }))
    ));
    let mut f = fds.with_read_only_data().unwrap();
    f.cons_event = epoll;
    assert!(
        from(f).is_ok(),
        "fstat cannot tell an epoll fd from an eventfd"
    );
}

#[test]
fn rmm_consumer_data_mapping_is_read_only() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let ro = fds.with_read_only_data().unwrap();
    // The fd itself is read-only: writing through it fails.
    assert!(rustix::io::pwrite(&ro.data, b"x", 0).is_err());
    rmm::Consumer::attach(&spec, ro).unwrap();
}

#[test]
fn hugetlb_falls_back_when_unavailable() {
    let spec = ChannelSpec {
        data_bytes: 2 << 20,
        hugetlb: true,
        ..spec()
    };
    let fds = create(&spec).unwrap();
    println!("hugetlb-backed: {}", fds.data_is_hugetlb());
    tmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
    tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
}

/// A hostile driver returns foreign extents to the app's masters: counted, discarded.
#[test]
fn masters_reject_buffers_they_did_not_hand_out() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let raw = RawControl::map(&fds.control, &spec).unwrap();
    let mut app = tmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
    let e = app.alloc(100).unwrap().unwrap();
    app.push(IoRec::single(e, 0)).unwrap();
    // The "driver" returns: a buffer never handed out, an overflowing extent, then the real one twice.
    let bogus = [
        IoRec::single(Extent::new(8192, 10), 0),
        IoRec::single(Extent::new(0xFFFF_FFFE, 4), 0),
        IoRec::single(e, 0),
        IoRec::single(e, 0),
    ];
    for (i, r) in bogus.iter().enumerate() {
        raw.write_slot(FifoId::Empty, i as u32, r.encode());
    }
    raw.set_index(IndexWord::EmptyHead, 4);
    assert_eq!(app.reclaim().unwrap(), 1);
    assert_eq!(app.counters().invalid_not_owned, 3);
    assert_eq!(
        app.buffers().1,
        app.buffers().0,
        "the real buffer is free again"
    );

    let fds = create(&spec).unwrap();
    let raw = RawControl::map(&fds.control, &spec).unwrap();
    let mut app = rmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let posted = app.post_free().unwrap();
    assert_eq!(posted, 16);
    raw.write_slot(
        FifoId::Full,
        0,
        IoRec::single(Extent::new(60000, 100), 0).encode(),
    );
    raw.write_slot(
        FifoId::Full,
        1,
        IoRec::single(Extent::new(0, 2000), 0).encode(),
    );
    raw.write_slot(
        FifoId::Full,
        2,
        IoRec::single(Extent::new(0, 60), 0).encode(),
    );
    raw.set_index(IndexWord::FullHead, 3);
    assert!(matches!(
        app.pop(),
        Err(Error::InvalidIoRec(IoRecError::NotOwned { .. }))
    ));
    assert!(matches!(
        app.pop(),
        Err(Error::InvalidIoRec(IoRecError::TooLong { .. }))
    ));
    let pkt = app.pop().unwrap().unwrap();
    assert_eq!(pkt.len(), 60);
    app.repost(pkt).unwrap();
    assert_eq!(app.counters().invalid_iorecs(), 2);
}

#[test]
fn blocking_wait_times_out_and_wakes() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let mut app = tmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        drv.wait_ready(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(50) && t0.elapsed() < Duration::from_secs(5));
    assert_eq!(drv.counters().timeouts, 1);

    // Cross-thread wake-up.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            let e = app.alloc(10).unwrap().unwrap();
            app.push(IoRec::single(e, 0)).unwrap();
        });
        drv.wait_ready(Duration::from_secs(10)).unwrap();
    });
    assert!(drv.pop().unwrap().is_some());
    assert!(app.counters().wakeups_sent <= 1);
}

/// A hostile peer that keeps clearing our "sleeping" flag only delays us until our timeout.
#[test]
fn cleared_sleep_flag_cannot_block_forever() {
    let spec = spec();
    let fds = create(&spec).unwrap();
    let raw = RawControl::map(&fds.control, &spec).unwrap();
    let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                raw.clear_sleep_flags();
                std::thread::yield_now();
            }
        });
        let t0 = Instant::now();
        assert!(matches!(
            drv.wait_ready(Duration::from_millis(100)),
            Err(Error::Timeout)
        ));
        assert!(t0.elapsed() < Duration::from_secs(5));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// The endpoint's fd works in poll(2): not readable while idle, readable once the peer pushes.
#[test]
fn event_fd_in_poll() {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let spec = spec();
    let fds = create(&spec).unwrap();
    let mut app = rmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let mut drv = rmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
    app.post_free().unwrap();
    assert!(!app.prepare_wait().unwrap(), "nothing there yet: sleep");
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        poll(&mut [PollFd::new(&app.as_fd(), PollFlags::IN)], Some(&zero)).unwrap(),
        0
    );
    let buf = drv.take_empty().unwrap().unwrap();
    drv.copy_in(&buf, b"hello").unwrap();
    drv.push_full(buf, 5).unwrap();
    let one_s = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    assert_eq!(
        poll(
            &mut [PollFd::new(&app.as_fd(), PollFlags::IN)],
            Some(&one_s)
        )
        .unwrap(),
        1
    );
    app.finish_wait();
    let pkt = app.pop().unwrap().unwrap();
    assert_eq!(app.payload(&pkt), b"hello");
    assert!(!app.prepare_wait().unwrap());
    app.finish_wait();
}
