//! The example applications' logic, as library functions over an open flow (the binaries are thin
//! `main`s over them, so the flow manager's client can be plugged in without touching them).
