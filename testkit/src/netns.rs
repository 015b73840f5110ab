//! Network namespaces playing remote hosts.

use std::process::{Command, Output};

/// Runs `ip ARGS`, returning its output or an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e} (apt-get install iproute2)"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted (with the interfaces inside it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name starting with `tag`, loopback up.
    pub fn new(tag: &str) -> Result<Self, String> {
        let name = crate::unique_name(tag);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a command inside the namespace to completion; error with its stderr if it fails.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, String> {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "{} (in netns {}): {}",
                argv.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Moves a kernel interface from the current namespace into this one.
    pub fn adopt(&self, iface: &str) -> Result<(), String> {
        ip(&["link", "set", iface, "netns", &self.name]).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
