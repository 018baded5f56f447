//! What to write so that a Service's EndpointSlices hold the desired endpoints, changing as few
//! slices as it can (`staging/src/k8s.io/endpointslice/reconciler.go`,
//! `reconcileByAddressType` and `reconcileByPortMapping`): endpoints that stay keep their
//! slice; a slice whose endpoints changed is updated, one left empty is deleted; new endpoints
//! fill slices being updated anyway, then slices with room, then new slices of at most
//! `max_endpoints` each. A Service with no endpoints at all keeps one empty placeholder slice.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

/// A group of endpoints that can share slices: one address type, one list of ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    pub address_type: String,
    pub ports: Vec<(String, i32, String, String)>,
}

impl Mapping {
    pub fn new(address_type: &str, ports: &[EndpointPort]) -> Mapping {
        let mut ports: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                    p.protocol.clone().unwrap_or_default(),
                    p.app_protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        ports.sort();
        Mapping {
            address_type: address_type.to_string(),
            ports,
        }
    }

    pub fn of(slice: &EndpointSlice) -> Mapping {
        Mapping::new(&slice.address_type, slice.ports.as_deref().unwrap_or(&[]))
    }
}

/// An endpoint's identity in a slice: its pod and first address.
pub fn endpoint_key(e: &Endpoint) -> String {
    let pod = e.target_ref.as_ref().and_then(|r| r.name.clone());
    format!(
        "{}/{}",
        pod.unwrap_or_default(),
        e.addresses.first().cloned().unwrap_or_default()
    )
}

/// The endpoints (and their ports) of one mapping.
pub struct Desired {
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Default, Debug)]
pub struct Plan {
    /// New slices: their address type, ports and endpoints (metadata is the caller's).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with their new endpoints (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

fn is_placeholder(s: &EndpointSlice) -> bool {
    s.endpoints.is_empty() && s.ports.as_deref().unwrap_or_default().is_empty()
}

/// The writes that bring `existing` (this Service's managed slices) to `desired`.
pub fn plan(
    existing: Vec<EndpointSlice>,
    desired: BTreeMap<Mapping, Desired>,
    max_endpoints: usize,
    placeholder_type: &str,
) -> Plan {
    let max = max_endpoints.max(1);
    let mut out = Plan::default();
    let mut by_mapping: BTreeMap<Mapping, Vec<EndpointSlice>> = BTreeMap::new();
    let mut placeholders = Vec::new();
    for s in existing {
        if is_placeholder(&s) {
            placeholders.push(s);
        } else {
            by_mapping.entry(Mapping::of(&s)).or_default().push(s);
        }
    }
    let mut unchanged = 0;
    for (m, want) in desired {
        let slices = by_mapping.remove(&m).unwrap_or_default();
        unchanged += plan_mapping(&m, slices, want, max, &mut out);
    }
    // Mappings no longer wanted lose all their slices.
    for slices in by_mapping.into_values() {
        out.delete
            .extend(slices.into_iter().filter_map(|s| s.metadata.name));
    }
    if out.create.is_empty() && out.update.is_empty() && unchanged == 0 {
        // Nothing to serve: one empty slice stays, as upstream's placeholder.
        match placeholders
            .iter()
            .position(|p| p.address_type == placeholder_type)
        {
            Some(i) => {
                placeholders.remove(i);
            }
            None => out.create.push(EndpointSlice {
                address_type: placeholder_type.to_string(),
                endpoints: vec![],
                ports: Some(vec![]),
                ..Default::default()
            }),
        }
    }
    out.delete
        .extend(placeholders.into_iter().filter_map(|p| p.metadata.name));
    out
}

/// Plans one mapping's slices; how many stay as they are.
fn plan_mapping(
    m: &Mapping,
    slices: Vec<EndpointSlice>,
    want: Desired,
    max: usize,
    out: &mut Plan,
) -> usize {
    let mut wanted: HashMap<String, Endpoint> = want
        .endpoints
        .into_iter()
        .map(|e| (endpoint_key(&e), e))
        .collect();
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    let mut unchanged: Vec<EndpointSlice> = Vec::new();
    let mut seen = HashSet::new();
    for mut s in slices {
        let before = std::mem::take(&mut s.endpoints);
        // An endpoint found in two slices stays in the first only.
        s.endpoints = before
            .iter()
            .filter(|e| seen.insert(endpoint_key(e)))
            .filter_map(|e| wanted.remove(&endpoint_key(e)))
            .collect();
        if s.endpoints.is_empty() {
            out.delete.extend(s.metadata.name.clone());
        } else if s.endpoints.len() > max {
            // A smaller limit than when it was written: the excess goes elsewhere.
            for e in s.endpoints.split_off(max) {
                wanted.insert(endpoint_key(&e), e);
            }
            to_update.push(s);
        } else if s.endpoints != before {
            to_update.push(s);
        } else {
            unchanged.push(s);
        }
    }
    let mut rest: Vec<Endpoint> = wanted.into_values().collect();
    // Sorted so that the order (and so the slices' contents) is stable across syncs.
    rest.sort_by_key(|e| std::cmp::Reverse(endpoint_key(e)));
    let fill = |s: &mut EndpointSlice, rest: &mut Vec<Endpoint>| {
        while s.endpoints.len() < max {
            let Some(e) = rest.pop() else { break };
            s.endpoints.push(e);
        }
    };
    // New endpoints go first into slices written anyway, then into those with room.
    for s in to_update.iter_mut() {
        fill(s, &mut rest);
    }
    let mut untouched = 0;
    for mut s in unchanged {
        if !rest.is_empty() && s.endpoints.len() < max {
            fill(&mut s, &mut rest);
            to_update.push(s);
        } else {
            untouched += 1;
        }
    }
    rest.reverse();
    for chunk in rest.chunks(max) {
        out.create.push(EndpointSlice {
            address_type: m.address_type.clone(),
            endpoints: chunk.to_vec(),
            ports: Some(want.ports.clone()),
            ..Default::default()
        });
    }
    out.update.extend(to_update);
    untouched
}
