//! What the TLS and Unix-socket systems need: one certificate for every TLS server of a run
//! (`ours-tls` and `tonic-tls` present the same one), made by the harness when the run
//! starts (rcgen, nothing checked in), and the path of the `ours-unix` socket.

use std::path::PathBuf;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::Result;

/// The PEM files of a run, in a directory of its own (removed by [`cleanup`]).
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

static PKI: OnceLock<Pki> = OnceLock::new();

/// The run's certificates, made on first use: a CA, and a certificate it issued for
/// `localhost` and 127.0.0.1 (ECDSA P-256, rcgen's default, for both servers).
pub(crate) fn pki() -> Result<&'static Pki> {
    if let Some(p) = PKI.get() {
        return Ok(p);
    }
    let dir = std::env::temp_dir().join(format!("bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, "bench server");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer)?;
    let pki = Pki {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        dir,
    };
    std::fs::write(&pki.ca, ca_pem)?;
    std::fs::write(&pki.cert, cert.pem())?;
    std::fs::write(&pki.key, key.serialize_pem())?;
    Ok(PKI.get_or_init(|| pki))
}

/// The CA the TLS clients trust (PEM).
pub(crate) fn ca_pem() -> Result<Vec<u8>> {
    Ok(std::fs::read(&pki()?.ca)?)
}

/// The socket of the `ours-unix` server of this run.
pub(crate) fn unix_path() -> PathBuf {
    std::env::temp_dir().join(format!("bench-rpc-{}.sock", std::process::id()))
}

/// Remove what the run made.
pub(crate) fn cleanup() {
    if let Some(p) = PKI.get() {
        let _ = std::fs::remove_dir_all(&p.dir);
    }
    let _ = std::fs::remove_file(unix_path());
}
