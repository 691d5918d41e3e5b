//! Zones in memory: names to record sets, ready to answer from.
//!
//! Names are keyed by their lower-case wire form, so lookups are case-insensitive without
//! allocating per label. Empty non-terminals (`b.example.` when only `a.b.example.` has records)
//! are nodes without record sets, so they answer NODATA rather than NXDOMAIN. Names made by
//! pushed TXT records (and their parents) are not nodes: the lookup takes them as a predicate
//! ([`Zone::find_key`]), so they exist and end a wildcard's cover just as nodes do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::Prefix;
use crate::policy::Policy;
use common::tsig::Key;

/// The record sets of a zone file, ready to answer from. Replaced whole on reload.
#[derive(Debug, Default)]
pub struct Zones {
    /// Longest origin first, so the first zone that contains a name is the closest one.
    zones: Vec<Zone>,
    /// Clients allowed to transfer zones (AXFR/IXFR); reloads with the zones.
    transfer_allow: Vec<Prefix>,
    /// The TSIG keys held (`[[dns.tsig_keys]]`); reloads with the zones.
    keys: Vec<Key>,
}

#[derive(Debug)]
pub struct Zone {
    pub origin: Name,
    /// The SOA record (owner: the origin), also the authority of negative answers.
    pub soa: Record,
    /// TTL of negative answers (RFC 2308: the smaller of the SOA's TTL and its MINIMUM).
    pub negative_ttl: u32,
    /// Secondaries sent a NOTIFY (RFC 1996) when the zone's serial changes.
    pub notify: Vec<SocketAddr>,
    /// The key (its lower-case name) a transfer of this zone must be signed with.
    pub transfer_key: Option<String>,
    /// The key NOTIFY messages of this zone are signed with.
    pub notify_key: Option<Key>,
    nodes: HashMap<Vec<u8>, Node>,
    has_wildcards: bool,
}

/// One owner name and its record sets.
#[derive(Debug)]
pub struct Node {
    pub name: Name,
    /// The metrics label of this name (its lower-case text).
    pub label: Arc<str>,
    pub rrsets: Vec<RrSet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RrSet {
    pub rtype: RecordType,
    pub data: RrData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RrData {
    Static { ttl: u32, rdatas: Vec<RData> },
    Routed(Policy),
}

/// Where a name lands in a zone.
pub enum Lookup<'a> {
    /// The zone has the name (perhaps as an empty non-terminal).
    Exact(&'a Node),
    /// The zone does not have the name but a wildcard covers it; answer from the wildcard's
    /// records with the query's name as owner.
    Wildcard(&'a Node),
    /// The zone has no records for the name. It does not exist unless something outside the
    /// zone's records makes it exist (a pushed TXT record, see [`Zone::find_key`]).
    NoRecords,
}

/// The lower-case wire form of a name: the key of every lookup.
pub fn name_key(name: &Name) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key
}

impl Zones {
    pub fn new(mut zones: Vec<Zone>, transfer_allow: Vec<Prefix>) -> Zones {
        zones.sort_by_key(|zone| std::cmp::Reverse(zone.origin.num_labels()));
        Zones {
            zones,
            transfer_allow,
            keys: Vec::new(),
        }
    }

    pub fn with_keys(mut self, keys: Vec<Key>) -> Zones {
        self.keys = keys;
        self
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether `client`, whose request was signed with the key `signed_with` (lower-case
    /// name, verified), may transfer `zone`: a zone with a `transfer_key` needs a request
    /// signed with it — and, when `axfr_allow` lists addresses, one of them too; BIND's
    /// `allow-transfer { key NAME; }` when it lists none —, any other zone a client in
    /// `axfr_allow`.
    pub fn transfer_allowed(&self, zone: &Zone, client: IpAddr, signed_with: Option<&str>) -> bool {
        let listed = self.transfer_allow.iter().any(|prefix| prefix.contains(client));
        match &zone.transfer_key {
            Some(key) => signed_with == Some(key.as_str()) && (listed || self.transfer_allow.is_empty()),
            None => listed,
        }
    }

    /// The closest zone containing `name`.
    pub fn zone_for(&self, name: &Name) -> Option<&Zone> {
        self.zones.iter().find(|zone| zone.origin.zone_of(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

impl Node {
    pub fn rrset(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|set| set.rtype == rtype)
    }
}

impl Zone {
    /// An empty zone with its SOA and apex NS set.
    pub fn new(origin: Name, soa: Record, soa_minimum: u32, ns: Vec<RData>, ns_ttl: u32) -> Zone {
        let negative_ttl = soa.ttl().min(soa_minimum);
        let mut zone = Zone {
            origin: origin.clone(),
            soa: soa.clone(),
            negative_ttl,
            notify: Vec::new(),
            transfer_key: None,
            notify_key: None,
            nodes: HashMap::new(),
            has_wildcards: false,
        };
        let apex = zone.node_mut(&origin);
        apex.rrsets.push(RrSet {
            rtype: RecordType::SOA,
            data: RrData::Static {
                ttl: soa.ttl(),
                rdatas: vec![soa.data().clone()],
            },
        });
        apex.rrsets.push(RrSet {
            rtype: RecordType::NS,
            data: RrData::Static {
                ttl: ns_ttl,
                rdatas: ns,
            },
        });
        zone
    }

    fn node_mut(&mut self, name: &Name) -> &mut Node {
        self.nodes.entry(name_key(name)).or_insert_with(|| {
            let lower = name.to_lowercase();
            Node {
                label: Arc::from(lower.to_ascii()),
                name: lower,
                rrsets: Vec::new(),
            }
        })
    }

    /// Adds a record set; the caller checked `name` is inside the zone. Errors say what clashes.
    pub fn add(&mut self, name: &Name, set: RrSet) -> Result<(), String> {
        let origin_labels = self.origin.num_labels();
        let node = self.node_mut(name);
        if node.rrset(set.rtype).is_some() {
            return Err(format!(
                "{} already has a {} record set; put all values of a name and type in one [[records]] entry",
                name, set.rtype
            ));
        }
        if set.rtype == RecordType::CNAME && !node.rrsets.is_empty() {
            return Err(format!(
                "{name} has other records, so it cannot have a CNAME (RFC 1034: a CNAME is alone at its name)"
            ));
        }
        if node.rrset(RecordType::CNAME).is_some() {
            return Err(format!(
                "{name} has a CNAME, so it cannot have other records (RFC 1034: a CNAME is alone at its name)"
            ));
        }
        node.rrsets.push(set);
        if name.is_wildcard() {
            self.has_wildcards = true;
        }
        // Every ancestor up to the origin exists, as an empty non-terminal if nothing else.
        let mut parent = name.base_name();
        while parent.num_labels() > origin_labels {
            self.node_mut(&parent);
            parent = parent.base_name();
        }
        Ok(())
    }

    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(&name_key(name))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Finds `name` (inside this zone), falling back to a wildcard at its closest encloser
    /// (RFC 4592).
    pub fn find(&self, name: &Name) -> Lookup<'_> {
        self.find_key(&name_key(name), |_| false)
    }

    /// [`find`](Self::find) by the name's [`name_key`], where `exists` says whether a name the
    /// zone has no node for exists all the same (a pushed TXT record or an ancestor of one). Such
    /// a name gets no wildcard's records (RFC 4592 §2.2.1: a wildcard covers only names that do
    /// not exist), and it is the closest encloser of the names below it, so a wildcard above it
    /// does not cover them either.
    pub fn find_key(&self, key: &[u8], exists: impl Fn(&[u8]) -> bool) -> Lookup<'_> {
        if let Some(node) = self.nodes.get(key) {
            return Lookup::Exact(node);
        }
        if !self.has_wildcards || exists(key) {
            return Lookup::NoRecords;
        }
        // Walk up: the first existing ancestor is the closest encloser; only its wildcard applies.
        let mut rest: &[u8] = key;
        while let Some((&length, tail)) = rest.split_first() {
            rest = tail.get(usize::from(length)..).unwrap_or(&[]);
            if self.nodes.contains_key(rest) || exists(rest) {
                let mut wildcard = Vec::with_capacity(rest.len() + 2);
                wildcard.extend_from_slice(&[1, b'*']);
                wildcard.extend_from_slice(rest);
                return match self.nodes.get(&wildcard) {
                    Some(node) => Lookup::Wildcard(node),
                    None => Lookup::NoRecords,
                };
            }
        }
        Lookup::NoRecords
    }
}
