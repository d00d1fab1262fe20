//! One process per GPU: where this process stands in the job (torchrun's or Slurm's environment
//! variables), the TCP rendezvous that hands rank 0's NCCL id to every rank, and the local
//! launcher behind `--nproc-per-node N`.

use crate::peer_watch::PeerLinks;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// This process's place in a multi-process run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// The GPU this process drives.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Which convention the values came from ("torchrun" or "slurm").
    pub source: &'static str,
}

/// The port torchrun uses when none is given.
const DEFAULT_PORT: u16 = 29500;
/// How long ranks wait for each other at the rendezvous.
const RENDEZVOUS_PATIENCE: Duration = Duration::from_secs(180);
const HELLO: &[u8; 8] = b"ppmoe-r1";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Dist {
    /// Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), else
    /// Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). None when neither is set or the world
    /// is one process.
    pub fn from_env() -> Result<Option<Dist>, String> {
        Dist::from_vars(var)
    }

    /// As `from_env`, reading the variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Dist>, String> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let number = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        format!("environment variable {name}={v:?} is not a non-negative integer")
                    })
                })
                .transpose()
        };
        let (rank, world, local, source) = match (number("RANK")?, number("WORLD_SIZE")?) {
            (Some(r), Some(w)) => (r, w, number("LOCAL_RANK")?, "torchrun"),
            (Some(_), None) | (None, Some(_)) => {
                return Err("RANK and WORLD_SIZE must be set together".into())
            }
            (None, None) => match (number("SLURM_PROCID")?, number("SLURM_NTASKS")?) {
                (Some(r), Some(w)) => (r, w, number("SLURM_LOCALID")?, "slurm"),
                _ => return Ok(None),
            },
        };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            return Err(format!(
                "rank {rank} is not below the world size {world} ({source} environment)"
            ));
        }
        let port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                format!("environment variable MASTER_PORT={p:?} is not a port number")
            })?,
            None => DEFAULT_PORT,
        };
        Ok(Some(Dist {
            rank,
            world,
            local_rank: local.unwrap_or(rank),
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port: port,
            source,
        }))
    }

    fn address(&self) -> Result<SocketAddr, String> {
        let spec = format!("{}:{}", self.master_addr, self.master_port);
        spec.to_socket_addrs()
            .map_err(|e| format!("MASTER_ADDR:MASTER_PORT = {spec}: {e}"))?
            .next()
            .ok_or_else(|| format!("{spec} resolves to no address"))
    }

    /// Hands rank 0's `id` to every rank over TCP on MASTER_ADDR:MASTER_PORT and returns it on
    /// each, with the connections kept open as the rank's links to its peers (see
    /// `peer_watch`). Each rank says who it is; rank 0 refuses a rank out of range, a duplicate
    /// or a different world size.
    pub fn rendezvous<const N: usize>(
        &self,
        make_id: impl FnOnce() -> Result<[u8; N], String>,
    ) -> Result<([u8; N], PeerLinks), String> {
        let addr = self.address()?;
        let deadline = Instant::now() + RENDEZVOUS_PATIENCE;
        let io = |what: &str, e: std::io::Error| format!("rendezvous on {addr}: {what}: {e}");
        if self.rank == 0 {
            let id = make_id()?;
            let listener = match crate::port_handoff::inherited(addr) {
                Some(l) => l,
                None => TcpListener::bind(addr).map_err(|e| io("rank 0 cannot listen", e))?,
            };
            listener
                .set_nonblocking(true)
                .map_err(|e| io("listen", e))?;
            let mut seen = vec![false; self.world];
            seen[0] = true;
            let mut links = Vec::with_capacity(self.world - 1);
            while seen.iter().any(|s| !s) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).map_err(|e| io("accept", e))?;
                        s.set_read_timeout(Some(Duration::from_secs(30)))
                            .map_err(|e| io("accept", e))?;
                        let mut hello = [0u8; 24];
                        s.read_exact(&mut hello)
                            .map_err(|e| io("reading a rank's hello", e))?;
                        let (r, w) = (
                            u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes")) as usize,
                            u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes")) as usize,
                        );
                        if &hello[..8] != HELLO {
                            return Err(format!(
                                "rendezvous on {addr}: a connection that is not a ppmoe rank"
                            ));
                        }
                        if w != self.world || r >= self.world || seen[r] {
                            return Err(format!("rendezvous on {addr}: rank {r} of world {w} joined a world of {} (rank taken, out of range, or a different job)", self.world));
                        }
                        seen[r] = true;
                        s.write_all(&id).map_err(|e| io("sending the NCCL id", e))?;
                        links.push((r, s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<usize> =
                                (0..self.world).filter(|&r| !seen[r]).collect();
                            return Err(format!(
                                "rendezvous on {addr}: ranks {missing:?} never joined within {}s",
                                RENDEZVOUS_PATIENCE.as_secs()
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io("accept", e)),
                }
            }
            Ok((id, PeerLinks::new(0, links)))
        } else {
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(io(&format!("rank {} cannot reach rank 0", self.rank), e))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            let mut hello = HELLO.to_vec();
            hello.extend((self.rank as u64).to_le_bytes());
            hello.extend((self.world as u64).to_le_bytes());
            s.write_all(&hello).map_err(|e| io("sending hello", e))?;
            s.set_read_timeout(Some(RENDEZVOUS_PATIENCE))
                .map_err(|e| io("connect", e))?;
            let mut id = [0u8; N];
            s.read_exact(&mut id)
                .map_err(|e| io("receiving the NCCL id from rank 0", e))?;
            Ok((id, PeerLinks::new(self.rank, vec![(0, s)])))
        }
    }
}

/// Runs `args` under this same executable as `n` local processes, one per GPU, with torchrun's
/// variables set, and waits for them. When one fails the others are stopped (they would wait for
/// it forever). Returns the exit code for the whole run.
pub fn launch_local(n: usize, args: &[String]) -> Result<i32, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to relaunch it: {e}"))?;
    let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
    // Without MASTER_PORT, a free port asked of the kernel and held until rank 0 inherits it.
    let (port, held) = match var("MASTER_PORT") {
        Some(p) => (p, None),
        None => {
            let l = crate::port_handoff::bind_free(&addr)?;
            let p = l
                .local_addr()
                .map_err(|e| format!("the rendezvous port on {addr}: {e}"))?
                .port();
            (p.to_string(), Some(l))
        }
    };
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut relays = Vec::new();
    for r in 0..n {
        let mut command = Command::new(&exe);
        if let (0, Some(l)) = (r, &held) {
            crate::port_handoff::hand_to(&mut command, l);
        }
        let child = command
            .args(args)
            .env("RANK", r.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(mut c) => {
                // Each line a rank prints is prefixed with its rank, so that N ranks stay readable.
                if let Some(out) = c.stdout.take() {
                    relays.push(relay(r, out, false));
                }
                if let Some(err) = c.stderr.take() {
                    relays.push(relay(r, err, true));
                }
                children.push((r, c));
            }
            Err(e) => {
                stop(&mut children);
                return Err(format!("cannot start rank {r} ({}): {e}", exe.display()));
            }
        }
    }
    // Rank 0 has its own copy now.
    drop(held);
    let mut code = 0;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (r, _) = children.remove(i);
                    if !status.success() && code == 0 {
                        code = status.code().unwrap_or(1).max(1);
                        eprintln!("rank {r} failed ({status}); stopping the other ranks");
                        stop(&mut children);
                    }
                }
                Ok(None) => i += 1,
                Err(e) => return Err(format!("waiting for rank {}: {e}", children[i].0)),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every line the ranks printed is out before the launcher says anything more.
    for h in relays {
        let _ = h.join();
    }
    Ok(code)
}

fn relay(
    rank: usize,
    from: impl Read + Send + 'static,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("[rank {rank}] {line}");
            } else {
                println!("[rank {rank}] {line}");
            }
        }
    })
}

fn stop(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

/// Takes `--nproc-per-node N` (or `=N`) out of `args`, returning N when given.
pub fn take_nproc_flag(args: &mut Vec<String>) -> Result<Option<usize>, String> {
    let Some(i) = args
        .iter()
        .position(|a| a == "--nproc-per-node" || a.starts_with("--nproc-per-node="))
    else {
        return Ok(None);
    };
    let a = args.remove(i);
    let v = match a.split_once('=') {
        Some((_, v)) => v.to_string(),
        None if i < args.len() => args.remove(i),
        None => return Err("--nproc-per-node needs a value".into()),
    };
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!("--nproc-per-node {v}: expected a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_flag_is_taken_out_in_both_spellings() {
        let mut a: Vec<String> = ["run", "b", "--nproc-per-node", "4", "--output-dir", "o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(take_nproc_flag(&mut a), Ok(Some(4)));
        assert_eq!(a, ["run", "b", "--output-dir", "o"]);
        let mut b: Vec<String> = ["run", "--nproc-per-node=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(take_nproc_flag(&mut b), Ok(Some(2)));
        assert_eq!(b, ["run"]);
        let mut c: Vec<String> = ["--nproc-per-node", "zero"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(take_nproc_flag(&mut c).is_err());
    }

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn torchrun_and_slurm_variables_place_the_process() {
        let t = Dist::from_vars(vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                t.rank,
                t.world,
                t.local_rank,
                t.master_addr.as_str(),
                t.master_port,
                t.source
            ),
            (3, 4, 1, "10.0.0.2", 1234, "torchrun")
        );
        let s = Dist::from_vars(vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                s.rank,
                s.world,
                s.local_rank,
                s.master_addr.as_str(),
                s.master_port,
                s.source
            ),
            (5, 8, 1, "127.0.0.1", 29500, "slurm")
        );
        // torchrun's variables win over Slurm's; a world of one is no distributed run.
        let both = Dist::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(both.source, "torchrun");
        assert_eq!(
            Dist::from_vars(vars(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        assert_eq!(Dist::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn bad_launch_variables_are_named() {
        let e = Dist::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = Dist::from_vars(vars(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = Dist::from_vars(vars(&[("RANK", "0")])).unwrap_err();
        assert!(e.contains("RANK and WORLD_SIZE"), "{e}");
        let e = Dist::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "99999"),
        ]))
        .unwrap_err();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn rendezvous_hands_rank_zeros_id_to_every_rank() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dist = |rank| Dist {
            rank,
            world: 3,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            source: "test",
        };
        let met: Vec<([u8; 16], PeerLinks)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| s.spawn(move || dist(r).rendezvous(|| Ok([7u8; 16])).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(met.iter().all(|(id, _)| *id == [7u8; 16]));
        // The connections stay as links: rank 0 to each rank, each rank to rank 0.
        let mut zero = met[0].1.peers();
        zero.sort();
        assert_eq!(zero, [1, 2]);
        assert!(met[1..].iter().all(|(_, l)| l.peers() == [0]));
    }
}
