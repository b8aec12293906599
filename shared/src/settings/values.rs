//! Parsers for setting values that are text in the environment: durations, lists of
//! durations, networks, and optional secrets where an empty value means "not set".

use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::TOSS_SOURCE_ADDRESSES;

pub(super) fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses `300ms`, `5s`, `1m`, `1h 30m`; a bare number means seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(raw).map_err(|e| format!("{raw:?} is not a duration ({e})"))
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    parse_duration(&raw).map_err(serde::de::Error::custom)
}

pub(super) fn duration_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let raw = String::deserialize(d)?;
    split_list(&raw).map(parse_duration).collect::<Result<_, _>>().map_err(serde::de::Error::custom)
}

pub(super) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = String::deserialize(d)?;
    let mut nets = Vec::new();
    for item in split_list(&raw) {
        if item.eq_ignore_ascii_case("toss") {
            nets.extend(TOSS_SOURCE_ADDRESSES.iter().map(|a| parse_network(a).expect("valid")));
        } else {
            nets.push(parse_network(item).map_err(serde::de::Error::custom)?);
        }
    }
    Ok(nets)
}

/// `10.0.0.0/8` or a single address (`1.2.3.4` means `/32`, an IPv6 address `/128`).
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is neither an address nor a CIDR network"))
}

pub(super) fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    Ok(raw.filter(|s| !s.trim().is_empty()).map(SecretString::from))
}

/// A file path where an empty value means "not set" (compose passes `${VAR:-}` as "").
pub(super) fn empty_path_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::path::PathBuf>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    Ok(raw.filter(|s| !s.trim().is_empty()).map(std::path::PathBuf::from))
}
