//! The signer: builds `Signature-Input`, `Signature` and `Content-Digest`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::Mac;
use rand::RngCore;
use sfv::{BareItem, InnerList, Item, KeyRef, ListEntry, ListSerializer, Parameters, StringRef};

use super::digest::{content_digest, DigestAlg};
use super::headers::Overlay;
use super::input::parse_signature_input;
use super::verify::{build_base, parse_components};
use super::{RequestParts, SignError, LABEL};
use crate::keys::hmac_for;
use crate::secret::Secret;
use crate::time::UnixTime;

/// Which components to cover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CoverSet {
    /// `@method @authority @path [@query] [content-digest]` — `@query` when
    /// the request has a non-empty query, `content-digest` when it has a body.
    #[default]
    Default,
    /// `@method @target-uri [content-digest]`.
    TargetUri,
    /// Exactly these component names (plain names, no parameters), in order.
    Custom(Vec<String>),
}

/// Everything the signer needs besides the request.
#[derive(Debug, Clone)]
pub struct SignOptions<'a> {
    pub key_id: String,
    pub secret: &'a Secret,
    pub created: UnixTime,
    pub expires: Option<UnixTime>,
    /// `None`: 16 random bytes, base64url without padding.
    pub nonce: Option<String>,
    pub covered: CoverSet,
    pub digest: DigestAlg,
    /// Header fields to cover in addition to the cover set (lowercased).
    pub extra_headers: Vec<String>,
}

impl<'a> SignOptions<'a> {
    /// Defaults: no expiry, a random nonce, the default cover set, sha-256.
    pub fn new(key_id: impl Into<String>, secret: &'a Secret, created: UnixTime) -> Self {
        SignOptions {
            key_id: key_id.into(),
            secret,
            created,
            expires: None,
            nonce: None,
            covered: CoverSet::Default,
            digest: DigestAlg::Sha256,
            extra_headers: Vec::new(),
        }
    }
}

/// The header values to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub signature_input: String,
    pub signature: String,
    /// Set when the request has a body.
    pub content_digest: Option<String>,
}

impl SignedHeaders {
    /// `(name, value)` pairs, ready to add to a request.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("signature-input", self.signature_input.as_str()),
            ("signature", self.signature.as_str()),
        ];
        if let Some(d) = &self.content_digest {
            v.push(("content-digest", d.as_str()));
        }
        v
    }
}

fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn string_item(s: &str) -> Result<Item, SignError> {
    let s = StringRef::from_str(s)
        .map_err(|e| SignError(format!("{s:?} cannot be a structured-field string: {e}")))?;
    Ok(Item::new(BareItem::String(s.to_owned())))
}

const CREATED: &KeyRef = KeyRef::constant("created");
const EXPIRES: &KeyRef = KeyRef::constant("expires");
const KEYID: &KeyRef = KeyRef::constant("keyid");
const NONCE: &KeyRef = KeyRef::constant("nonce");

fn string_param(v: &str) -> Result<BareItem, SignError> {
    Ok(string_item(v)?.bare_item)
}

/// Signs a request. `body` is the content to send; a non-empty body gets a
/// `Content-Digest` (covered by the default cover sets).
pub fn sign(
    req: &RequestParts<'_>,
    body: Option<&[u8]>,
    opts: &SignOptions<'_>,
) -> Result<SignedHeaders, SignError> {
    let has_body = body.is_some_and(|b| !b.is_empty());
    let digest = has_body.then(|| content_digest(opts.digest, body.unwrap_or_default()));

    let mut names: Vec<String> = match &opts.covered {
        CoverSet::Default => {
            let mut v = vec!["@method".into(), "@authority".into(), "@path".into()];
            if req.query.is_some_and(|q| !q.is_empty()) {
                v.push("@query".into());
            }
            if has_body {
                v.push("content-digest".into());
            }
            v
        }
        CoverSet::TargetUri => {
            let mut v = vec!["@method".into(), "@target-uri".into()];
            if has_body {
                v.push("content-digest".into());
            }
            v
        }
        CoverSet::Custom(names) => names.clone(),
    };
    names.extend(opts.extra_headers.iter().map(|h| h.to_ascii_lowercase()));

    let mut params = Parameters::new();
    params.insert(
        CREATED.to_owned(),
        BareItem::Integer(int(opts.created.as_secs())?),
    );
    if let Some(exp) = opts.expires {
        params.insert(EXPIRES.to_owned(), BareItem::Integer(int(exp.as_secs())?));
    }
    params.insert(KEYID.to_owned(), string_param(&opts.key_id)?);
    let nonce = opts.nonce.clone().unwrap_or_else(random_nonce);
    params.insert(NONCE.to_owned(), string_param(&nonce)?);

    let items = names
        .iter()
        .map(|n| string_item(n))
        .collect::<Result<Vec<_>, _>>()?;
    let list = InnerList::with_params(items, params);

    // Serialise once, then build the base from the parsed text exactly as
    // the verifier will.
    let mut signature_input = String::with_capacity(160);
    signature_input.push_str(LABEL);
    signature_input.push('=');
    let mut ser = ListSerializer::with_buffer(&mut signature_input);
    ser.members(std::iter::once(&ListEntry::InnerList(list)));
    let _ = ser.finish();

    let overlay;
    let req_for_base = match &digest {
        Some(d) => {
            overlay = Overlay {
                inner: req.headers,
                name: "content-digest",
                value: d,
            };
            RequestParts {
                headers: &overlay,
                ..*req
            }
        }
        None => *req,
    };
    let base = {
        let (_, parsed) = parse_signature_input(&signature_input)?;
        let components = parse_components(&parsed)?;
        build_base(&components, &parsed, &req_for_base)?
    };
    let signature = format!("{LABEL}=:{}:", mac_base64(opts.secret, &base));

    Ok(SignedHeaders {
        signature_input,
        signature,
        content_digest: digest,
    })
}

fn int(v: i64) -> Result<sfv::Integer, SignError> {
    sfv::Integer::try_from(v).map_err(|_| SignError(format!("timestamp {v} out of range")))
}

/// base64 of hmac-sha256(secret, base): the signature value for a base.
pub fn mac_base64(secret: &Secret, base: &str) -> String {
    let mut mac = hmac_for(secret);
    mac.update(base.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}
