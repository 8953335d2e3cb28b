//! Certificates for the TLS tests of the example binaries, made at run time (rcgen) and
//! written to a directory of the test's own: a CA, a server certificate for `localhost`
//! and 127.0.0.1, and a client certificate from the same CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The PEM files, in `dir`.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

impl Pki {
    /// Make the certificates and write them to a fresh directory named after `name`.
    pub(crate) fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("rpc-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "example CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, names: &[&str], dir: &Path| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (c, k) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (server_cert, server_key) = leaf("server", &["localhost"], &dir);
        let (client_cert, client_key) = leaf("client", &["client.example.com"], &dir);
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_pem).unwrap();
        Pki {
            dir,
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// The client's settings: trust the CA.
    pub(crate) fn client_tls(&self) -> easyrpc::ClientTls {
        easyrpc::ClientTls::from_ca_file(&self.ca).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
