//! `zen-bench identities`: a throwaway PKI and key set for load tests — a CA,
//! the proxy's serving SVID, N agent SVIDs with their HMAC keys, and the
//! proxy's trust bundle and key set that accept exactly those agents.
//!
//! With `intermediate`, agent SVIDs are signed by an intermediate CA under
//! the root and each `svid.pem` holds the leaf then the intermediate, as
//! zen-control issues them; bundles hold the root only either way.
//!
//! Layout under `--out DIR`:
//! - `ca/ca.crt`, `ca/ca.key` (0600) — kept so `swap` can re-issue the proxy cert;
//! - `proxy/tls.crt`, `proxy/tls.key` (0600), `proxy/bundle.pem`, `proxy/keyset.json`;
//! - `agents/a<i>/` in the zen-agent layout: `svid.pem`, `svid.key` (0600),
//!   `bundle.pem`, `hmac.json`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zen_agent::files::{self as agent_files, write_atomic};
use zen_trust::keys::{HmacKeyFile, KeySetEntry, KeySetFile, KeyStatus};
use zen_trust::secret::Secret;
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

pub const CA_DIR: &str = "ca";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PROXY_DIR: &str = "proxy";
pub const PROXY_CERT: &str = "tls.crt";
pub const PROXY_KEY: &str = "tls.key";
pub const PROXY_BUNDLE: &str = "bundle.pem";
pub const PROXY_KEYSET: &str = "keyset.json";
pub const AGENTS_DIR: &str = "agents";

#[derive(Debug, Clone)]
pub struct IdentitySpec {
    pub out: PathBuf,
    pub agents: usize,
    pub trust_domain: String,
    pub cluster: String,
    pub valid_days: i64,
    /// Sign agent SVIDs with an intermediate under the root (see the module doc).
    pub intermediate: bool,
}

/// What was written, for the command's summary line.
#[derive(Debug)]
pub struct Generated {
    pub proxy_id: SpiffeId,
    pub agent_ids: Vec<SpiffeId>,
}

pub fn generate(spec: &IdentitySpec) -> Result<Generated> {
    let td = zen_trust::spiffe::TrustDomain::parse(&spec.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", spec.trust_domain))?;
    let now = OffsetDateTime::now_utc();
    // Backdated a little so a machine with a slightly slow clock accepts it.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(spec.valid_days);

    let ca = make_ca(td.as_str(), not_before, not_after)?;
    let ca_pem = ca.pem();
    let ca_dir = spec.out.join(CA_DIR);
    mkdir(&ca_dir)?;
    write(&ca_dir.join(CA_CERT), ca_pem.as_bytes(), 0o644)?;
    write(
        &ca_dir.join(CA_KEY),
        ca.key().serialize_pem().as_bytes(),
        0o600,
    )?;

    let proxy_id = parse_id(&format!("spiffe://{}/proxy/bench", td.as_str()))?;
    let proxy_dir = spec.out.join(PROXY_DIR);
    mkdir(&proxy_dir)?;
    write_proxy_cert(&proxy_dir, &ca, &proxy_id, not_before, not_after)?;
    write(&proxy_dir.join(PROXY_BUNDLE), ca_pem.as_bytes(), 0o644)?;

    let intermediate = spec
        .intermediate
        .then(|| make_intermediate(td.as_str(), &ca, not_before, not_after))
        .transpose()?;
    let (agent_issuer, chain_tail) = match &intermediate {
        Some(i) => (i, i.pem()),
        None => (&ca, String::new()),
    };

    let key_not_before = UnixTime::from_secs(not_before.unix_timestamp());
    let key_not_after = UnixTime::from_secs(not_after.unix_timestamp());
    let mut keys = Vec::with_capacity(spec.agents);
    let mut agent_ids = Vec::with_capacity(spec.agents);
    for i in 1..=spec.agents {
        let name = format!("a{i}");
        let id = parse_id(&format!(
            "spiffe://{}/cluster/{}/agent/{name}",
            td.as_str(),
            spec.cluster
        ))?;
        let dir = spec.out.join(AGENTS_DIR).join(&name);
        mkdir(&dir)?;
        let leaf = leaf_params(&id, &name, not_before, not_after, false)?;
        let key = KeyPair::generate().context("generating an agent key")?;
        let cert = leaf
            .signed_by(&key, agent_issuer)
            .context("signing an agent SVID")?;
        let mut chain = cert.pem();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&chain_tail);
        write(&dir.join(agent_files::SVID_CHAIN), chain.as_bytes(), 0o644)?;
        write(
            &dir.join(agent_files::SVID_KEY),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write(&dir.join(agent_files::BUNDLE), ca_pem.as_bytes(), 0o644)?;

        let secret = Secret::generate();
        let key_id = format!("bench-{}-{name}-{}", spec.cluster, random_hex(4));
        let hmac = HmacKeyFile {
            key_id: key_id.clone(),
            secret: secret.clone(),
            not_after: key_not_after,
        };
        let hmac_json = serde_json::to_vec_pretty(&hmac).context("encoding hmac.json")?;
        write(&dir.join(agent_files::HMAC_KEY), &hmac_json, 0o600)?;
        keys.push(KeySetEntry {
            key_id,
            secret,
            owner: id.clone(),
            not_before: key_not_before,
            not_after: key_not_after,
            status: KeyStatus::Active,
        });
        agent_ids.push(id);
    }
    write_key_set(
        &proxy_dir.join(PROXY_KEYSET),
        &KeySetFile { version: 1, keys },
    )?;
    Ok(Generated {
        proxy_id,
        agent_ids,
    })
}

/// Re-issues the proxy's serving certificate from the CA under `ca_dir`
/// (used by the `swap` scenario). Returns the new certificate's serial (hex).
pub fn reissue_proxy_cert(ca_dir: &Path, proxy_dir: &Path, proxy_id: &SpiffeId) -> Result<String> {
    let ca_pem = read_string(&ca_dir.join(CA_CERT))?;
    let ca_key_pem = read_string(&ca_dir.join(CA_KEY))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{}: not a usable CA key", ca_dir.join(CA_KEY).display()))?;
    let ca = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{}: not a usable CA", ca_dir.join(CA_CERT).display()))?;
    let now = OffsetDateTime::now_utc();
    write_proxy_cert(
        proxy_dir,
        &ca,
        proxy_id,
        now - Duration::hours(1),
        now + Duration::days(7),
    )
}

fn write_proxy_cert(
    proxy_dir: &Path,
    ca: &Issuer<'_, KeyPair>,
    proxy_id: &SpiffeId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<String> {
    let params = leaf_params(proxy_id, "bench proxy", not_before, not_after, true)?;
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| hex_string(&s.to_bytes()))
        .unwrap_or_default();
    let key = KeyPair::generate().context("generating the proxy key")?;
    let cert = params
        .signed_by(&key, ca)
        .context("signing the proxy certificate")?;
    // Key first: a watcher that reacts to the cert file then finds a matching key.
    write(
        &proxy_dir.join(PROXY_KEY),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write(&proxy_dir.join(PROXY_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(serial)
}

pub fn write_key_set(path: &Path, file: &KeySetFile) -> Result<()> {
    let json = serde_json::to_vec_pretty(file).context("encoding the key set")?;
    write(path, &json, 0o600)
}

fn make_ca(
    td: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let p = ca_params(
        td,
        "CA",
        BasicConstraints::Unconstrained,
        not_before,
        not_after,
    )?;
    let key = KeyPair::generate().context("generating the CA key")?;
    CertifiedIssuer::self_signed(p, key).context("self-signing the CA")
}

/// A signing CA under `root`, as zen-control's intermediate: a CA with the
/// trust domain's SPIFFE ID, allowed to sign leaves only (path length 0).
fn make_intermediate(
    td: &str,
    root: &CertifiedIssuer<'static, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let p = ca_params(
        td,
        "intermediate",
        BasicConstraints::Constrained(0),
        not_before,
        not_after,
    )?;
    let key = KeyPair::generate().context("generating the intermediate key")?;
    CertifiedIssuer::signed_by(p, key, root).context("signing the intermediate")
}

/// A CA certificate of the trust domain `td`, named "zen-bench `what` `td`".
fn ca_params(
    td: &str,
    what: &str,
    constraints: BasicConstraints,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, format!("zen-bench {what} {td}"));
    p.is_ca = IsCa::Ca(constraints);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{td}")
            .try_into()
            .context("trust domain URI")?,
    )];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial());
    Ok(p)
}

/// An X.509-SVID leaf (DESIGN §4): one URI SAN, not a CA, digitalSignature.
/// The proxy's serving leaf also carries DNS `localhost` and IP 127.0.0.1
/// so ordinary TLS clients (and the peers in `compare`) verify it.
fn leaf_params(
    id: &SpiffeId,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    server: bool,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    let mut sans = vec![SanType::URI(
        id.as_str().try_into().context("SPIFFE ID as a URI SAN")?,
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        sans.push(SanType::DnsName("localhost".try_into()?));
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        p.extended_key_usages
            .insert(0, ExtendedKeyUsagePurpose::ServerAuth);
    }
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial());
    Ok(p)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so every serial is 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex_string(&bytes)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_id(s: &str) -> Result<SpiffeId> {
    SpiffeId::parse(s).with_context(|| format!("{s:?} is not a valid SPIFFE ID"))
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic(path, bytes, mode).map_err(anyhow::Error::new)
}

fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_agent_dirs_the_proxy_accepts() {
        writes_agent_dirs(false);
    }

    #[test]
    fn with_an_intermediate_agents_present_leaf_then_intermediate() {
        writes_agent_dirs(true);
    }

    fn writes_agent_dirs(intermediate: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spec = IdentitySpec {
            out: dir.path().to_owned(),
            agents: 3,
            trust_domain: "zen.local".into(),
            cluster: "c1".into(),
            valid_days: 2,
            intermediate,
        };
        let made = generate(&spec).unwrap();
        assert_eq!(made.agent_ids.len(), 3);
        assert_eq!(
            made.agent_ids[2].as_str(),
            "spiffe://zen.local/cluster/c1/agent/a3"
        );

        let keyset = std::fs::read_to_string(dir.path().join("proxy/keyset.json")).unwrap();
        let keyset = KeySetFile::from_json(&keyset).unwrap();
        let set = zen_trust::keys::KeySet::from_file(keyset).unwrap();
        assert_eq!(set.len(), 3);

        let now = UnixTime::now();
        for (i, id) in made.agent_ids.iter().enumerate() {
            let agent_dir = dir.path().join(format!("agents/a{}", i + 1));
            let files = zen_agent::files::AgentFiles::load(&agent_dir).unwrap();
            let leaf = zen_trust::svid::check_svid_leaf(&files.svid_chain[0], now).unwrap();
            assert_eq!(&leaf.spiffe_id, id);
            assert_chain_to_root(&files.svid_chain, &dir.path().join("proxy/bundle.pem"));
            assert_eq!(files.svid_chain.len(), if intermediate { 2 } else { 1 });
            // The key the agent signs with is owned by the agent's own SPIFFE ID.
            let key = set.get(&files.hmac.key_id).unwrap();
            assert_eq!(key.owner(), id);
            let mode = std::fs::metadata(agent_dir.join("svid.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let proxy_pem = std::fs::read(dir.path().join("proxy/tls.crt")).unwrap();
        let chain = zen_trust::svid::pem_to_der_chain(&proxy_pem).unwrap();
        let leaf = zen_trust::svid::check_svid_leaf(&chain[0], now).unwrap();
        assert_eq!(leaf.spiffe_id, made.proxy_id);

        let before = leaf.serial_hex.clone();
        reissue_proxy_cert(
            &dir.path().join("ca"),
            &dir.path().join("proxy"),
            &made.proxy_id,
        )
        .unwrap();
        let pem = std::fs::read(dir.path().join("proxy/tls.crt")).unwrap();
        let chain = zen_trust::svid::pem_to_der_chain(&pem).unwrap();
        let again = zen_trust::svid::check_svid_leaf(&chain[0], now).unwrap();
        assert_ne!(again.serial_hex, before);
    }

    /// Each certificate of `chain` is signed by the next, the last by the one
    /// root in `bundle`, and everything above the leaf is a CA.
    fn assert_chain_to_root(chain: &[rustls_pki_types::CertificateDer<'static>], bundle: &Path) {
        let bundle = zen_trust::svid::pem_to_der_chain(&std::fs::read(bundle).unwrap()).unwrap();
        assert_eq!(bundle.len(), 1, "bundles hold the root only");
        fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
            x509_parser::parse_x509_certificate(der).unwrap().1
        }
        let mut certs: Vec<_> = chain.iter().map(|c| parse(c.as_ref())).collect();
        certs.push(parse(bundle[0].as_ref()));
        for pair in certs.windows(2) {
            let (child, issuer) = (&pair[0], &pair[1]);
            assert!(issuer.is_ca());
            assert_eq!(child.issuer(), issuer.subject());
            child
                .verify_signature(Some(issuer.public_key()))
                .expect("signed by the next certificate");
        }
    }
}
