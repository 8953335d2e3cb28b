//! Who may connect, and who may call what: [`Rules`], given to
//! [`Builder::rules`](crate::Builder::rules).
//!
//! Rules are data: a list of [`Rule`]s, each an [`Action`] (allow or deny), a [`Match`]
//! saying which connections it is about (by listener or transport, peer address or CIDR,
//! Unix uid, TLS client identity) and, for a per-method rule, a method name pattern. They
//! print (`Display`, one numbered line per rule) and can be checked without a server
//! ([`Rules::refuses_connection`], [`Rules::refuses_method`]).
//!
//! ```
//! use easyrpc_server::rules::{Match, Rules};
//! use easyrpc_server::Transport;
//!
//! let rules = Rules::new()
//!     // Connections: TCP and TLS peers from 10.0.0.0/8 only (Unix peers are not matched
//!     // by either rule, so they are allowed).
//!     .allow(Match::any().from("10.0.0.0/8".parse()?))
//!     .deny(Match::any().on(Transport::Tcp).on(Transport::Tls))
//!     // Methods: admin_* only over the Unix socket, and only for uid 0 there.
//!     .methods_only("admin_*", Match::any().on(Transport::Unix).uid(0));
//! assert_eq!(
//!     rules.to_string(),
//!     "1. allow connections from 10.0.0.0/8\n\
//!      2. deny connections on tcp or tls\n\
//!      3. allow methods admin_* on unix as uid 0\n\
//!      4. deny methods admin_* on every connection\n"
//! );
//! # Ok::<(), easyrpc_server::rules::CidrError>(())
//! ```
//!
//! # How they apply
//!
//! - **Connections.** The rules without a method pattern are tried in order; the first
//!   whose match holds decides. If none holds, the connection is allowed: end the list
//!   with `.deny(Match::any())` to allow only what is listed. A connection refused is
//!   closed at once and logged (info) with the rule that refused it. Rules are checked
//!   right after accept; on a TLS listener, a rule that needs the client's certificate
//!   is checked after the handshake (the rules before it are still checked at accept).
//! - **Methods.** For each method, the rules whose pattern matches its name are tried in
//!   order, the first whose match holds deciding; none: allowed. A call refused gets
//!   [`ErrorCode::PermissionDenied`](easyrpc_proto::ErrorCode::PermissionDenied) (code 12),
//!   logged at info with the rule. Patterns are names with `*` standing for any run of
//!   characters (`admin_*`, `kv.*`, `*`); the reserved `rpc.*` methods (heartbeat,
//!   `rpc.worker`) are never refused. What each connection may call is worked out once,
//!   when it opens: a server without rules, or with no per-method rule, calls as fast as
//!   before.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::context::Peer;
use crate::tls::TlsIdentity;
use crate::Transport;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`). A bare
/// address is the network of that address alone (`/32` or `/128`). An IPv4 network also
/// contains the IPv4-mapped IPv6 form of its addresses (`::ffff:10.1.2.3`), as peers of a
/// dual-stack listener appear.
///
/// ```
/// use easyrpc_server::rules::Cidr;
///
/// let lan: Cidr = "192.168.0.0/16".parse()?;
/// assert!(lan.contains("192.168.7.1".parse().unwrap()));
/// assert!(!lan.contains("10.0.0.1".parse().unwrap()));
/// assert_eq!("10.1.2.3/8".parse::<Cidr>()?.to_string(), "10.0.0.0/8");
/// # Ok::<(), easyrpc_server::rules::CidrError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR that cannot be read: not an address, or a prefix longer than the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CIDR (expected ADDRESS or ADDRESS/PREFIX, as 10.0.0.0/8): {0:?}")]
pub struct CidrError(String);

impl Cidr {
    /// The network of `addr` with a prefix of `prefix` bits (host bits are cleared).
    ///
    /// # Errors
    ///
    /// When `prefix` is longer than the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(CidrError(format!("{addr}/{prefix}")));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

impl From<IpAddr> for Cidr {
    fn from(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which connections a rule is about. Every condition given must hold; a condition given
/// several times (two CIDRs, say) holds when any of them does. `Match::any()` alone holds
/// for every connection.
///
/// ```
/// use easyrpc_server::rules::Match;
/// use easyrpc_server::Transport;
///
/// // TLS clients whose certificate names ops.example.com, from the 10/8 network.
/// let ops = Match::any()
///     .on(Transport::Tls)
///     .tls_san("ops.example.com")
///     .from("10.0.0.0/8".parse()?);
/// assert_eq!(ops.to_string(), "on tls from 10.0.0.0/8 with tls san ops.example.com");
/// # Ok::<(), easyrpc_server::rules::CidrError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    transports: Vec<Transport>,
    listeners: Vec<String>,
    peers: Vec<Cidr>,
    uids: Vec<u32>,
    tls_subjects: Vec<String>,
    tls_sans: Vec<String>,
}

impl Match {
    /// Every connection; add conditions with the other methods.
    pub fn any() -> Match {
        Match::default()
    }

    /// Connections on a listener of this transport.
    #[must_use]
    pub fn on(mut self, transport: Transport) -> Match {
        self.transports.push(transport);
        self
    }

    /// Connections on the listener named `name`: its [`LocalAddr`](crate::LocalAddr) as
    /// printed, `127.0.0.1:5000` or `unix:/run/app.sock` (what
    /// [`Context::listener`](crate::Context::listener) says).
    #[must_use]
    pub fn listener(mut self, name: impl Into<String>) -> Match {
        self.listeners.push(name.into());
        self
    }

    /// TCP and TLS peers whose address is in `cidr` (a Unix peer never is).
    #[must_use]
    pub fn from(mut self, cidr: Cidr) -> Match {
        self.peers.push(cidr);
        self
    }

    /// Unix peers whose process runs as user `uid` (`SO_PEERCRED`; never a TCP peer).
    #[must_use]
    pub fn uid(mut self, uid: u32) -> Match {
        self.uids.push(uid);
        self
    }

    /// TLS clients whose certificate's subject (RFC 4514, as in
    /// [`TlsIdentity::subject`]) matches `pattern` (`*`: any run of characters). Only a
    /// client that presented a certificate (mutual TLS) can match.
    #[must_use]
    pub fn tls_subject(mut self, pattern: impl Into<String>) -> Match {
        self.tls_subjects.push(pattern.into());
        self
    }

    /// TLS clients with a subject alternative name (as in [`TlsIdentity::sans`]) that
    /// matches `pattern` (`*`: any run of characters).
    #[must_use]
    pub fn tls_san(mut self, pattern: impl Into<String>) -> Match {
        self.tls_sans.push(pattern.into());
        self
    }

    /// Whether it needs the client's TLS certificate to be decided.
    fn needs_identity(&self) -> bool {
        !self.tls_subjects.is_empty() || !self.tls_sans.is_empty()
    }

    /// Whether it holds for `conn`: `None` when that depends on a TLS identity not known
    /// yet (`identity_known` false: before the handshake).
    fn holds(&self, conn: &ConnFacts<'_>, identity_known: bool) -> Option<bool> {
        let decided = (self.transports.is_empty() || self.transports.contains(&conn.transport))
            && (self.listeners.is_empty() || self.listeners.iter().any(|l| l == conn.listener))
            && (self.peers.is_empty()
                || conn
                    .peer
                    .addr()
                    .is_some_and(|a| self.peers.iter().any(|c| c.contains(a.ip()))))
            && (self.uids.is_empty()
                || matches!(conn.peer, Peer::Unix { uid: Some(u), .. } if self.uids.contains(u)));
        if !decided || !self.needs_identity() {
            return Some(decided);
        }
        if conn.transport != Transport::Tls {
            // No certificate can come.
            return Some(false);
        }
        if !identity_known {
            return None;
        }
        let Some(id) = conn.tls else { return Some(false) };
        Some(
            (self.tls_subjects.is_empty() || self.tls_subjects.iter().any(|p| glob(p, &id.subject)))
                && (self.tls_sans.is_empty()
                    || self.tls_sans.iter().any(|p| id.sans.iter().any(|s| glob(p, s)))),
        )
    }
}

/// `items` joined by " or ".
fn alternatives<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.transports.is_empty() {
            parts.push(format!("on {}", alternatives(&self.transports)));
        }
        if !self.listeners.is_empty() {
            parts.push(format!("on listener {}", alternatives(&self.listeners)));
        }
        if !self.peers.is_empty() {
            parts.push(format!("from {}", alternatives(&self.peers)));
        }
        if !self.uids.is_empty() {
            parts.push(format!("as uid {}", alternatives(&self.uids)));
        }
        if !self.tls_subjects.is_empty() {
            parts.push(format!("with tls subject {}", alternatives(&self.tls_subjects)));
        }
        if !self.tls_sans.is_empty() {
            parts.push(format!("with tls san {}", alternatives(&self.tls_sans)));
        }
        if parts.is_empty() {
            f.write_str("every connection")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// What a rule does when its match holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the connection in, or the call run.
    Allow,
    /// Close the connection, or answer the call with "permission denied" (12).
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// One rule: an action, the connections it is about, and for a per-method rule the
/// methods (a name pattern). Made by the methods of [`Rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    action: Action,
    methods: Option<String>,
    when: Match,
}

impl Rule {
    /// Allow or deny.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The method name pattern of a per-method rule; `None` for a connection rule.
    pub fn methods(&self) -> Option<&str> {
        self.methods.as_deref()
    }

    /// The connections it is about.
    pub fn when(&self) -> &Match {
        &self.when
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = if self.when == Match::default() {
            "on every connection".to_owned()
        } else {
            self.when.to_string()
        };
        match &self.methods {
            None if self.when == Match::default() => write!(f, "{} every connection", self.action),
            None => write!(f, "{} connections {}", self.action, self.when),
            Some(pattern) => write!(f, "{} methods {pattern} {on}", self.action),
        }
    }
}

/// A server's rules, in order. See the [module docs](self) for how they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// What the rules are checked against: the facts of a connection.
///
/// ```
/// use easyrpc_server::rules::{ConnFacts, Match, Rules};
/// use easyrpc_server::{Peer, Transport};
///
/// let rules = Rules::new().deny(Match::any().from("203.0.113.0/24".parse()?));
/// let peer = Peer::Tcp("203.0.113.9:40000".parse().unwrap());
/// let conn = ConnFacts { transport: Transport::Tcp, listener: "0.0.0.0:5000", peer: &peer, tls: None };
/// let refusal = rules.refuses_connection(&conn).expect("refused");
/// assert_eq!(refusal.to_string(), "rule 1 (deny connections from 203.0.113.0/24)");
/// # Ok::<(), easyrpc_server::rules::CidrError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConnFacts<'a> {
    /// The listener's transport.
    pub transport: Transport,
    /// The listener's name ([`LocalAddr`](crate::LocalAddr) as printed).
    pub listener: &'a str,
    /// Who connected.
    pub peer: &'a Peer,
    /// The client certificate's identity (TLS with a client certificate).
    pub tls: Option<&'a TlsIdentity>,
}

/// The rule that refused a connection or a call, and its number (from 1, as printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal<'a> {
    /// Its number in the list, from 1.
    pub number: usize,
    /// The rule.
    pub rule: &'a Rule,
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({})", self.number, self.rule)
    }
}

/// What the connection rules say about a connection before its TLS identity is known.
enum Early<'a> {
    Allow,
    Deny(Refusal<'a>),
    /// A rule that needs the identity comes first.
    Undecided,
}

impl Rules {
    /// No rules: every connection and call allowed.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Allow connections that match (when no earlier rule decided).
    #[must_use]
    pub fn allow(self, when: Match) -> Rules {
        self.push(Action::Allow, None, when)
    }

    /// Refuse connections that match (when no earlier rule decided).
    #[must_use]
    pub fn deny(self, when: Match) -> Rules {
        self.push(Action::Deny, None, when)
    }

    /// Allow the methods matching `pattern` on connections that match (when no earlier
    /// rule for them decided).
    #[must_use]
    pub fn allow_methods(self, pattern: impl Into<String>, when: Match) -> Rules {
        self.push(Action::Allow, Some(pattern.into()), when)
    }

    /// Refuse the methods matching `pattern` on connections that match (when no earlier
    /// rule for them decided).
    #[must_use]
    pub fn deny_methods(self, pattern: impl Into<String>, when: Match) -> Rules {
        self.push(Action::Deny, Some(pattern.into()), when)
    }

    /// The methods matching `pattern` only on connections that match: the two rules
    /// `allow_methods(pattern, when)` and `deny_methods(pattern, Match::any())`.
    ///
    /// ```
    /// use easyrpc_server::rules::{Match, Rules};
    /// use easyrpc_server::Transport;
    ///
    /// let rules = Rules::new().methods_only("admin.*", Match::any().on(Transport::Unix));
    /// assert_eq!(rules.rules().len(), 2);
    /// ```
    #[must_use]
    pub fn methods_only(self, pattern: impl Into<String>, when: Match) -> Rules {
        let pattern = pattern.into();
        self.allow_methods(pattern.clone(), when)
            .deny_methods(pattern, Match::any())
    }

    fn push(mut self, action: Action, methods: Option<String>, when: Match) -> Rules {
        self.rules.push(Rule {
            action,
            methods,
            when,
        });
        self
    }

    /// Every rule, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The connection rules with their numbers.
    fn connection_rules(&self) -> impl Iterator<Item = (usize, &Rule)> {
        self.numbered().filter(|(_, r)| r.methods.is_none())
    }

    fn numbered(&self) -> impl Iterator<Item = (usize, &Rule)> {
        self.rules.iter().enumerate().map(|(i, r)| (i + 1, r))
    }

    /// The rule that refuses `conn`, if one does.
    pub fn refuses_connection(&self, conn: &ConnFacts<'_>) -> Option<Refusal<'_>> {
        for (number, rule) in self.connection_rules() {
            if rule.when.holds(conn, true) == Some(true) {
                return (rule.action == Action::Deny).then_some(Refusal { number, rule });
            }
        }
        None
    }

    /// What the connection rules say before the TLS identity is known.
    fn early(&self, conn: &ConnFacts<'_>) -> Early<'_> {
        for (number, rule) in self.connection_rules() {
            match rule.when.holds(conn, false) {
                Some(false) => {}
                Some(true) if rule.action == Action::Deny => return Early::Deny(Refusal { number, rule }),
                Some(true) => return Early::Allow,
                None => return Early::Undecided,
            }
        }
        Early::Allow
    }

    /// The rule that refuses a call of `method` on `conn`, if one does. Reserved `rpc.*`
    /// methods are never refused.
    pub fn refuses_method(&self, method: &str, conn: &ConnFacts<'_>) -> Option<Refusal<'_>> {
        if method.starts_with(easyrpc_proto::RESERVED_PREFIX) {
            return None;
        }
        for (number, rule) in self.numbered() {
            let Some(pattern) = &rule.methods else { continue };
            if glob(pattern, method) && rule.when.holds(conn, true) == Some(true) {
                return (rule.action == Action::Deny).then_some(Refusal { number, rule });
            }
        }
        None
    }
}

impl fmt::Display for Rules {
    /// One line per rule, numbered from 1 (as refusals name them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (number, rule) in self.numbered() {
            writeln!(f, "{number}. {rule}")?;
        }
        Ok(())
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters
/// (possibly empty) and everything else for itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A server's rules, ready for its connections: for each method, which per-method rules
/// are about it (patterns matched once, at build).
#[derive(Debug)]
pub(crate) struct ServerRules {
    rules: Rules,
    /// For each registry entry (by index), the numbers of the per-method rules whose
    /// pattern matches its name, in order; empty without per-method rules.
    by_entry: Vec<Vec<usize>>,
    /// Whether any rule is about methods.
    any_method_rule: bool,
}

/// What one connection may not call: for each registry entry, the number of the rule that
/// refuses it. Made when the connection opens, only when some method is refused to it.
#[derive(Debug)]
pub(crate) struct Denied {
    by_entry: Box<[Option<u32>]>,
    rules: Arc<ServerRules>,
}

impl Denied {
    /// The rule refusing the entry at `index`, if any.
    pub(crate) fn refusal(&self, index: usize) -> Option<Refusal<'_>> {
        let number = (*self.by_entry.get(index)?)? as usize;
        Some(Refusal {
            number,
            rule: &self.rules.rules.rules[number - 1],
        })
    }
}

impl ServerRules {
    /// `rules` for the methods `names` (each entry's index and name).
    pub(crate) fn new<'a>(rules: Rules, names: impl Iterator<Item = (usize, &'a str)>) -> ServerRules {
        let method_rules: Vec<(usize, &str)> = rules
            .numbered()
            .filter_map(|(n, r)| r.methods.as_deref().map(|p| (n, p)))
            .collect();
        let mut by_entry = Vec::new();
        if !method_rules.is_empty() {
            for (index, name) in names {
                if by_entry.len() <= index {
                    by_entry.resize_with(index + 1, Vec::new);
                }
                if name.starts_with(easyrpc_proto::RESERVED_PREFIX) {
                    continue;
                }
                by_entry[index] = method_rules
                    .iter()
                    .filter(|(_, p)| glob(p, name))
                    .map(|(n, _)| *n)
                    .collect();
            }
        }
        ServerRules {
            any_method_rule: !method_rules.is_empty(),
            rules,
            by_entry,
        }
    }

    pub(crate) fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The rule refusing a connection right after accept, before any TLS handshake: a
    /// rule that needs the client's certificate, and every one after it, wait for the
    /// handshake (then [`Rules::refuses_connection`] decides).
    pub(crate) fn refuses_early(
        &self,
        transport: Transport,
        listener: &str,
        peer: &Peer,
    ) -> Option<Refusal<'_>> {
        let conn = ConnFacts {
            transport,
            listener,
            peer,
            tls: None,
        };
        match self.rules.early(&conn) {
            Early::Deny(r) => Some(r),
            Early::Allow | Early::Undecided => None,
        }
    }

    /// The methods `conn` may not call; `None` when it may call them all.
    pub(crate) fn denied(self: &Arc<Self>, conn: &ConnFacts<'_>) -> Option<Arc<Denied>> {
        if !self.any_method_rule {
            return None;
        }
        let mut any = false;
        let by_entry: Box<[Option<u32>]> = self
            .by_entry
            .iter()
            .map(|numbers| {
                let rule = numbers
                    .iter()
                    .map(|&n| (n, &self.rules.rules[n - 1]))
                    .find(|(_, r)| r.when.holds(conn, true) == Some(true))?;
                let denied = (rule.1.action == Action::Deny).then_some(rule.0 as u32);
                any |= denied.is_some();
                denied
            })
            .collect();
        any.then(|| {
            Arc::new(Denied {
                by_entry,
                rules: self.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Peer {
        Peer::Tcp(addr.parse().unwrap())
    }

    fn unix(uid: u32) -> Peer {
        Peer::Unix {
            uid: Some(uid),
            gid: Some(uid),
            pid: Some(1),
        }
    }

    fn facts<'a>(transport: Transport, peer: &'a Peer, tls: Option<&'a TlsIdentity>) -> ConnFacts<'a> {
        ConnFacts {
            transport,
            listener: if transport == Transport::Unix {
                "unix:/run/app.sock"
            } else {
                "127.0.0.1:5000"
            },
            peer,
            tls,
        }
    }

    #[test]
    fn cidrs_parse_normalise_and_contain() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!("127.0.0.1".parse::<Cidr>().unwrap().to_string(), "127.0.0.1/32");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!("[fd00::]/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert!("fd00::/8"
            .parse::<Cidr>()
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("admin_*", "admin_stats"));
        assert!(glob("admin_*", "admin_"));
        assert!(!glob("admin_*", "admin"));
        assert!(!glob("admin_*", "xadmin_stats"));
        assert!(glob("*", ""));
        assert!(glob("*.get", "kv.get"));
        assert!(glob("a*b*c", "aXXbYYbc"));
        assert!(!glob("a*b*c", "aXXbYYbd"));
        assert!(glob("add", "add"));
        assert!(!glob("add", "add2"));
        assert!(glob("CN=*,O=Example", "CN=alice,O=Example"));
    }

    #[test]
    fn connection_rules_first_match_decides_and_the_default_is_allow() {
        let rules = Rules::new()
            .allow(Match::any().from("10.0.0.0/8".parse().unwrap()))
            .allow(Match::any().from("127.0.0.1".parse().unwrap()))
            .deny(Match::any().on(Transport::Tcp).on(Transport::Tls));
        let inside = tcp("10.1.1.1:1000");
        let local = tcp("127.0.0.1:1000");
        let outside = tcp("192.0.2.1:1000");
        let u = unix(1000);
        assert!(rules
            .refuses_connection(&facts(Transport::Tcp, &inside, None))
            .is_none());
        assert!(rules
            .refuses_connection(&facts(Transport::Tls, &local, None))
            .is_none());
        let refusal = rules
            .refuses_connection(&facts(Transport::Tls, &outside, None))
            .unwrap();
        assert_eq!(refusal.number, 3);
        assert_eq!(refusal.to_string(), "rule 3 (deny connections on tcp or tls)");
        assert!(
            rules
                .refuses_connection(&facts(Transport::Unix, &u, None))
                .is_none(),
            "unix: no rule holds"
        );
        // Deny by default.
        let only_root = Rules::new()
            .allow(Match::any().on(Transport::Unix).uid(0))
            .deny(Match::any());
        assert!(only_root
            .refuses_connection(&facts(Transport::Unix, &unix(0), None))
            .is_none());
        assert_eq!(
            only_root
                .refuses_connection(&facts(Transport::Unix, &u, None))
                .unwrap()
                .number,
            2
        );
        assert!(only_root
            .refuses_connection(&facts(Transport::Tcp, &local, None))
            .is_some());
    }

    #[test]
    fn listener_names_match_exactly() {
        let rules = Rules::new().deny(Match::any().listener("127.0.0.1:5000"));
        let p = tcp("127.0.0.1:1");
        assert!(rules
            .refuses_connection(&facts(Transport::Tcp, &p, None))
            .is_some());
        let other = ConnFacts {
            listener: "127.0.0.1:5001",
            ..facts(Transport::Tcp, &p, None)
        };
        assert!(rules.refuses_connection(&other).is_none());
    }

    #[test]
    fn identity_rules_wait_for_the_handshake() {
        let alice = TlsIdentity::new("CN=alice,O=Example", ["alice.example.com"]);
        let bob = TlsIdentity::new("CN=bob,O=Example", ["bob.example.com"]);
        let rules = Rules::new()
            .deny(Match::any().from("192.0.2.0/24".parse().unwrap()))
            .allow(Match::any().tls_san("alice.*"))
            .deny(Match::any().on(Transport::Tls));
        let server = ServerRules::new(rules.clone(), std::iter::empty());
        let bad = tcp("192.0.2.7:1");
        let good = tcp("127.0.0.1:1");
        // Decided at accept, before the identity rule.
        assert_eq!(
            server
                .refuses_early(Transport::Tls, "127.0.0.1:5000", &bad)
                .unwrap()
                .number,
            1
        );
        // Undecided at accept: the identity rule comes first.
        assert!(server
            .refuses_early(Transport::Tls, "127.0.0.1:5000", &good)
            .is_none());
        assert!(matches!(
            rules.early(&facts(Transport::Tls, &good, None)),
            Early::Undecided
        ));
        // After the handshake.
        assert!(rules
            .refuses_connection(&facts(Transport::Tls, &good, Some(&alice)))
            .is_none());
        assert_eq!(
            rules
                .refuses_connection(&facts(Transport::Tls, &good, Some(&bob)))
                .unwrap()
                .number,
            3
        );
        assert_eq!(
            rules
                .refuses_connection(&facts(Transport::Tls, &good, None))
                .unwrap()
                .number,
            3
        );
        // Plain TCP can have no identity: decided at accept.
        assert!(matches!(
            rules.early(&facts(Transport::Tcp, &good, None)),
            Early::Allow
        ));
        let subject = Rules::new()
            .allow(Match::any().tls_subject("CN=*,O=Example"))
            .deny(Match::any());
        assert!(subject
            .refuses_connection(&facts(Transport::Tls, &good, Some(&bob)))
            .is_none());
    }

    #[test]
    fn method_rules_and_what_each_connection_may_not_call() {
        let rules = Rules::new()
            .allow(Match::any())
            .methods_only("admin_*", Match::any().on(Transport::Unix))
            .deny_methods("*", Match::any().from("192.0.2.0/24".parse().unwrap()));
        let names = ["rpc.ping", "rpc.worker", "add", "admin_stats", "admin_reset"];
        let server = Arc::new(ServerRules::new(rules.clone(), names.iter().copied().enumerate()));
        let local = tcp("127.0.0.1:1");
        let u = unix(1000);
        let far = tcp("192.0.2.1:1");

        let tcp_conn = facts(Transport::Tcp, &local, None);
        assert_eq!(rules.refuses_method("admin_stats", &tcp_conn).unwrap().number, 3);
        assert!(rules.refuses_method("add", &tcp_conn).is_none());
        let denied = server.denied(&tcp_conn).unwrap();
        let refused: Vec<_> = (0..names.len())
            .map(|i| denied.refusal(i).map(|r| r.number))
            .collect();
        assert_eq!(refused, [None, None, None, Some(3), Some(3)]);
        assert_eq!(
            denied.refusal(3).unwrap().to_string(),
            "rule 3 (deny methods admin_* on every connection)"
        );

        let unix_conn = facts(Transport::Unix, &u, None);
        assert!(rules.refuses_method("admin_stats", &unix_conn).is_none());
        assert!(server.denied(&unix_conn).is_none(), "nothing denied: no table");

        let far_conn = facts(Transport::Tcp, &far, None);
        let denied = server.denied(&far_conn).unwrap();
        let refused: Vec<_> = (0..names.len())
            .map(|i| denied.refusal(i).map(|r| r.number))
            .collect();
        assert_eq!(
            refused,
            [None, None, Some(4), Some(3), Some(3)],
            "rpc.* never refused"
        );
        assert!(rules.refuses_method("rpc.ping", &far_conn).is_none());

        // No per-method rule: nothing to work out per connection.
        let conn_only = ServerRules::new(Rules::new().deny(Match::any()), names.iter().copied().enumerate());
        assert!(!conn_only.any_method_rule);
        assert!(Arc::new(conn_only).denied(&tcp_conn).is_none());
    }

    #[test]
    fn rules_print_one_numbered_line_each() {
        let rules = Rules::new()
            .deny(
                Match::any()
                    .from("192.0.2.0/24".parse().unwrap())
                    .from("::1".parse().unwrap()),
            )
            .allow(Match::any().on(Transport::Unix).uid(0).uid(1000))
            .deny(Match::any().listener("127.0.0.1:5000"))
            .deny(Match::any().tls_subject("CN=eve*"))
            .allow_methods(
                "kv.*",
                Match::any().on(Transport::Tls).tls_san("*.ops.example.com"),
            )
            .deny_methods("kv.*", Match::any())
            .deny(Match::any());
        assert_eq!(
            rules.to_string(),
            "1. deny connections from 192.0.2.0/24 or ::1/128\n\
             2. allow connections on unix as uid 0 or 1000\n\
             3. deny connections on listener 127.0.0.1:5000\n\
             4. deny connections with tls subject CN=eve*\n\
             5. allow methods kv.* on tls with tls san *.ops.example.com\n\
             6. deny methods kv.* on every connection\n\
             7. deny every connection\n"
        );
        assert_eq!(rules.rules()[4].methods(), Some("kv.*"));
        assert_eq!(rules.rules()[4].action(), Action::Allow);
        assert!(rules.rules()[0].methods().is_none());
        assert!(format!("{rules:?}").contains("Deny"));
    }
}
