//! The cluster's credentials: a generated CA and serving certificate (as k3s and kubeadm make
//! them), the admin bearer token, and the admin kubeconfig that points kubectl at them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Writes a file readable only by root (mode 0600), replacing it atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Loads the CA and serving certificate from `dir`, creating them on first start.
pub fn ensure_pki(dir: &Path, hostname: &str) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let (ca_crt, ca_key, crt, key) = (
        dir.join("ca.crt"),
        dir.join("ca.key"),
        dir.join("apiserver.crt"),
        dir.join("apiserver.key"),
    );
    if ca_crt.exists() && crt.exists() && key.exists() {
        return Ok(Pki {
            ca_pem: fs::read_to_string(&ca_crt)?,
            cert_pem: fs::read_to_string(&crt)?,
            key_pem: fs::read_to_string(&key)?,
        });
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "skiff-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_keypair = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_keypair)?;
    let ca_key_pem = ca_keypair.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_keypair);

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ])?;
    if !hostname.is_empty() && hostname != "localhost" {
        params.subject_alt_names.push(SanType::DnsName(
            hostname
                .try_into()
                .map_err(|e| anyhow!("hostname {hostname:?}: {e}"))?,
        ));
    }
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    params
        .subject_alt_names
        .push(SanType::IpAddress("::1".parse()?));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let keypair = KeyPair::generate()?;
    let cert = params.signed_by(&keypair, &issuer)?;

    let pki = Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: keypair.serialize_pem(),
    };
    write_private(&ca_key, ca_key_pem.as_bytes())?;
    write_private(&key, pki.key_pem.as_bytes())?;
    write_private(&crt, pki.cert_pem.as_bytes())?;
    write_private(&ca_crt, pki.ca_pem.as_bytes())?;
    Ok(pki)
}

/// The admin bearer token, created on first start.
pub fn ensure_token(path: &Path) -> Result<String> {
    if let Ok(t) = fs::read_to_string(path) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, token.as_bytes())?;
    Ok(token)
}

/// Writes the admin kubeconfig (HTTPS on 127.0.0.1, embedded CA, bearer token).
pub fn write_kubeconfig(path: &Path, port: u16, ca_pem: &str, token: &str) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: skiff-admin\n  user:\n    token: {token}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff-admin\n    namespace: default\ncurrent-context: skiff\npreferences: {{}}\n"
    );
    write_private(path, text.as_bytes())
}

/// The rustls server configuration for the HTTPS listener (HTTP/1.1, which kubectl's exec
/// and port-forward upgrades need).
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>> {
    let certs =
        rustls_pemfile::certs(&mut pki.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())?
        .ok_or_else(|| anyhow!("no private key in apiserver.key"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_pki(&dir.path().join("pki"), "testhost").unwrap();
        let b = ensure_pki(&dir.path().join("pki"), "testhost").unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        assert!(server_config(&a).is_ok());
        let mode = fs::metadata(dir.path().join("pki/apiserver.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = ensure_token(&dir.path().join("token")).unwrap();
        assert_eq!(t, ensure_token(&dir.path().join("token")).unwrap());
        write_kubeconfig(&dir.path().join("kc"), 6443, &a.ca_pem, &t).unwrap();
        let c = skiff_core::client::ApiClient::from_kubeconfig(&dir.path().join("kc"));
        assert!(c.is_ok());
    }
}
