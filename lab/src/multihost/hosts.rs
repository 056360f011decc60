//! The hosts file: one line per host (`TARGET WORKERS ENGINE SLOTS THREADS [ADDRESS]`), and which host a
//! worker's URL belongs to.

use modelpool::proto::WorkerStatus;

/// How to reach a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ssh(String),
    Netns(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLine {
    pub target: Target,
    pub workers: usize,
    pub engine: String,
    pub slots: u32,
    pub threads: u32,
    /// Where its workers listen (an IP address or name, no port).
    pub address: String,
}

impl HostLine {
    pub fn name(&self) -> &str {
        match &self.target {
            Target::Ssh(target) => target,
            Target::Netns(name) => name,
        }
    }
}

/// Parses a hosts file; errors name the line.
pub fn parse_hosts(text: &str) -> Result<Vec<HostLine>, String> {
    let mut hosts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| format!("hosts file line {}: {reason}", number + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(at(format!("{} fields; expected TARGET WORKERS ENGINE SLOTS THREADS [ADDRESS]", fields.len())));
        }
        let target = match fields[0].split_once(':') {
            Some(("netns", name)) if !name.is_empty() => Target::Netns(name.to_string()),
            Some(("ssh", target)) if !target.is_empty() => Target::Ssh(target.to_string()),
            _ => Target::Ssh(fields[0].to_string()),
        };
        let number_of = |i: usize, what: &str| {
            fields[i].parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| at(format!("{what} {:?} is not a positive number", fields[i])))
        };
        let engine = fields[2].to_string();
        if engine != "llama" && engine != "mlx" {
            return Err(at(format!("engine {engine:?}; expected llama or mlx")));
        }
        // Fields reach ssh and the remote command line as arguments: one that ssh would read as an
        // option, or that a remote shell would read as syntax, is refused here.
        let name = match &target {
            Target::Ssh(name) | Target::Netns(name) => name,
        };
        if name.starts_with('-') {
            return Err(at(format!("target {name:?} starts with '-', which ssh would read as an option")));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "@._-:[]".contains(c)) {
            return Err(at(format!("target {name:?}: use letters, digits and @ . _ - : [ ] only")));
        }
        let address = match (fields.get(5), &target) {
            (Some(address), _) => address.to_string(),
            (None, Target::Ssh(target)) => target.rsplit('@').next().unwrap_or(target).to_string(),
            (None, Target::Netns(_)) => return Err(at("a netns host needs its ADDRESS".into())),
        };
        if address.starts_with('-') || !address.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
            return Err(at(format!("address {address:?} is not a host name or IP address")));
        }
        hosts.push(HostLine {
            target,
            workers: number_of(1, "WORKERS")? as usize,
            engine,
            slots: number_of(3, "SLOTS")?,
            threads: number_of(4, "THREADS")?,
            address,
        });
    }
    if hosts.is_empty() {
        return Err("the hosts file names no host".into());
    }
    Ok(hosts)
}

/// Where a worker listens, as an address the hosts file would name: the host part of its URL.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']'])
}

pub fn host_of<'h>(hosts: &'h [HostLine], status: &WorkerStatus) -> Option<&'h HostLine> {
    let address = status.info.as_ref().map(|i| url_host(&i.address))?;
    hosts.iter().find(|h| h.address == address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_parse_with_defaults_and_errors_name_the_line() {
        let hosts = parse_hosts("# lab\nssh:me@gpu1 2 llama 4 8\nnetns:mp-h1 1 mlx 1 1 10.0.0.11  # sim\n\nbox3 1 llama 1 2 192.168.1.3\n")
            .unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].target, Target::Ssh("me@gpu1".into()));
        assert_eq!((hosts[0].workers, hosts[0].slots, hosts[0].threads, hosts[0].address.as_str()), (2, 4, 8, "gpu1"));
        assert_eq!(hosts[1].target, Target::Netns("mp-h1".into()));
        assert_eq!(hosts[1].engine, "mlx");
        assert_eq!(hosts[2].target, Target::Ssh("box3".into()));
        assert!(parse_hosts("netns:x 1 llama 1 1").unwrap_err().contains("line 1"));
        assert!(parse_hosts("a 0 llama 1 1").unwrap_err().contains("WORKERS"));
        assert!(parse_hosts("a 1 vllm 1 1").unwrap_err().contains("engine"));
        assert!(parse_hosts("# nothing\n").is_err());
    }

    #[test]
    fn fields_that_ssh_or_a_remote_shell_would_interpret_are_refused() {
        assert!(parse_hosts("ssh:-oProxyCommand=touch.x 1 llama 1 1 10.0.0.1").unwrap_err().contains("option"));
        assert!(parse_hosts("-oProxyCommand=x 1 llama 1 1 10.0.0.1").unwrap_err().contains("option"));
        assert!(parse_hosts("ssh:me@box;reboot 1 llama 1 1").unwrap_err().contains("target"));
        assert!(parse_hosts("ssh:me@box 1 llama 1 1 10.0.0.1;reboot").unwrap_err().contains("address"));
        assert!(parse_hosts("ssh:me@box 1 llama 1 1 $(id)").unwrap_err().contains("address"));
        assert!(parse_hosts("ssh:me@box 1 llama 1 1 --bind").unwrap_err().contains("address"));
        assert!(parse_hosts("ssh:me@[fe80::1] 1 llama 1 1 fe80::1").is_ok());
    }

    #[test]
    fn a_worker_url_maps_to_its_host_address() {
        assert_eq!(url_host("http://10.231.0.11:41235"), "10.231.0.11");
        assert_eq!(url_host("https://gpu1:50051/"), "gpu1");
        assert_eq!(url_host("http://[::1]:5"), "::1");
    }
}
