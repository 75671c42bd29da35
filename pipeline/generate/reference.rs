//! The generator's reference data (`reference.toml`, compiled in): distributions, names,
//! areas, SNOMED CT and dm+d codes, fault rates, and the Type 1 opt-out codelist shipped
//! in `policies/codelists/type1-opt-out.csv`.
//!
//! Owns parsing that data strictly (unknown keys refused) and turning weights into
//! cumulative tables once, so the hot loop only draws. Reference data is compiled in and
//! tested here, so a failure to load it is a bug, never a user error. It never holds
//! patient data.

use serde::Deserialize;

use super::GenerateError;

const REFERENCE_TOML: &str = include_str!("reference.toml");
const TYPE1_CSV: &str = include_str!("../../policies/codelists/type1-opt-out.csv");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReference {
    rates: Rates,
    sex: Vec<(String, u64)>,
    ethnicity: Vec<(String, u64)>,
    age_band: Vec<AgeBand>,
    names: RawNames,
    area: Vec<RawArea>,
    snomed: Vec<Snomed>,
    dmd: Vec<Dmd>,
    appointments: RawAppointments,
}

/// Rates and shares (see `reference.toml` for what each means).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rates {
    pub medications_per_event: f64,
    pub appointments_per_event: f64,
    pub generic_rows_per_patient: f64,
    pub null_share: f64,
    pub invalid_nhs_share: f64,
    pub missing_nhs_share: f64,
    pub malformed_share: f64,
    pub spaced_nhs_share: f64,
    pub hyphenated_nhs_share: f64,
    pub opt_out_list_spaced_share: f64,
    pub type1_share: f64,
    pub type1_dissent_only: f64,
    pub type1_dissent_then_withdrawal: f64,
    pub type1_legacy_code_share: f64,
    pub opt_out_share_of_type1_dissenters: f64,
    pub patients_per_practice: u64,
    pub surname_first_share: f64,
    pub missing_name_share: f64,
    pub missing_postcode_share: f64,
    pub missing_ethnicity_share: f64,
    pub missing_mode_share: f64,
    pub future_appointment_share: f64,
    pub registrations: Vec<u64>,
    pub history_years: u32,
    pub bad_dates: Vec<String>,
    pub bad_numbers: Vec<String>,
    pub latin1_text: Vec<String>,
}

/// An age band at the extract date.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgeBand {
    pub from: u32,
    pub to: u32,
    pub weight: u64,
    pub activity: f64,
    pub death_share: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNames {
    female: Vec<String>,
    male: Vec<String>,
    surnames: Vec<String>,
    latin1: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArea {
    #[allow(dead_code)]
    name: String,
    weight: u64,
    ods_prefix: String,
    outward: Vec<String>,
    lsoa_prefix: String,
    lsoa_from: u32,
    lsoa_to: u32,
}

/// A geographic area: practices, postcode districts and LSOAs.
#[derive(Debug, Clone)]
pub(crate) struct Area {
    pub ods_prefix: String,
    pub outward: Vec<String>,
    pub lsoa_prefix: String,
    pub lsoa_from: u32,
    pub lsoa_to: u32,
}

/// A SNOMED CT concept, with a value range when it is an observation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snomed {
    pub code: String,
    #[allow(dead_code)]
    pub term: String,
    pub weight: u64,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub min: f64,
    #[serde(default)]
    pub max: f64,
    #[serde(default)]
    pub decimals: u8,
}

/// A dm+d product and its usual issue quantities.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Dmd {
    pub code: String,
    #[allow(dead_code)]
    pub term: String,
    pub weight: u64,
    pub quantities: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppointments {
    past_status: Vec<(String, u64)>,
    future_status: Vec<(String, u64)>,
    mode: Vec<(String, u64)>,
}

/// Whether a Type 1 code records a dissent or its withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type1Kind {
    /// Dissent from secondary use (opted out).
    Dissent,
    /// Dissent withdrawn (opted back in).
    Withdrawal,
}

/// Type 1 codes split by kind and coding system.
#[derive(Debug, Clone, Default)]
pub(crate) struct Type1Codes {
    pub snomed_dissent: Vec<String>,
    pub snomed_withdrawal: Vec<String>,
    pub legacy_dissent: Vec<String>,
    pub legacy_withdrawal: Vec<String>,
}

/// Values with cumulative weights, ready to draw from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Weighted<T> {
    pub items: Vec<T>,
    pub cumulative: Vec<u64>,
}

impl<T> Weighted<T> {
    fn new(pairs: impl IntoIterator<Item = (T, u64)>) -> Self {
        let mut items = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (item, w) in pairs {
            total += w;
            items.push(item);
            cumulative.push(total);
        }
        Weighted { items, cumulative }
    }

    /// Whether there is nothing with positive weight to draw.
    pub fn is_empty(&self) -> bool {
        self.cumulative.last().copied().unwrap_or(0) == 0
    }
}

/// All reference data, validated.
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    pub rates: Rates,
    pub sex: Weighted<String>,
    pub ethnicity: Weighted<String>,
    pub age_bands: Weighted<AgeBand>,
    /// Population-average activity, to normalise per-band activity to mean 1.
    pub mean_activity: f64,
    pub female: Vec<String>,
    pub male: Vec<String>,
    pub surnames: Vec<String>,
    /// Surnames in capitals, for "SURNAME, Forename".
    pub surnames_upper: Vec<String>,
    /// Latin-1 encoded names (invalid UTF-8).
    pub latin1: Vec<Vec<u8>>,
    /// Latin-1 encoded other text (invalid UTF-8).
    pub latin1_text: Vec<Vec<u8>>,
    pub areas: Weighted<Area>,
    pub snomed: Weighted<Snomed>,
    pub dmd: Weighted<Dmd>,
    pub registrations: Vec<u64>,
    pub past_status: Vec<(String, u64)>,
    pub future_status: Vec<(String, u64)>,
    pub mode: Vec<(String, u64)>,
    pub type1: Type1Codes,
}

fn bug(message: String) -> GenerateError {
    GenerateError::Bug { message }
}

/// Every share in the rates is in [0, 1], and the counts that must be positive are.
fn check_rates(rates: &Rates) -> Result<(), GenerateError> {
    let check_share = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(bug(format!(
                "reference.toml: {name} must be a share in [0, 1]"
            )))
        }
    };
    for (name, v) in [
        ("null_share", rates.null_share),
        ("invalid_nhs_share", rates.invalid_nhs_share),
        ("missing_nhs_share", rates.missing_nhs_share),
        ("malformed_share", rates.malformed_share),
        ("spaced_nhs_share", rates.spaced_nhs_share),
        ("hyphenated_nhs_share", rates.hyphenated_nhs_share),
        ("type1_share", rates.type1_share),
        ("type1_dissent_only", rates.type1_dissent_only),
        (
            "type1_dissent_then_withdrawal",
            rates.type1_dissent_then_withdrawal,
        ),
        ("type1_legacy_code_share", rates.type1_legacy_code_share),
        (
            "opt_out_share_of_type1_dissenters",
            rates.opt_out_share_of_type1_dissenters,
        ),
    ] {
        check_share(name, v)?;
    }
    if rates.registrations.is_empty() || rates.registrations.iter().sum::<u64>() == 0 {
        return Err(bug(
            "reference.toml: registrations needs a positive weight".into()
        ));
    }
    if rates.patients_per_practice == 0 {
        return Err(bug(
            "reference.toml: patients_per_practice must be positive".into(),
        ));
    }
    Ok(())
}

/// Areas with their weights; each needs postcode districts and a 3-character ODS prefix.
fn areas(raw: Vec<RawArea>) -> Result<Weighted<Area>, GenerateError> {
    let areas = Weighted::new(raw.into_iter().map(|a| {
        (
            Area {
                ods_prefix: a.ods_prefix,
                outward: a.outward,
                lsoa_prefix: a.lsoa_prefix,
                lsoa_from: a.lsoa_from,
                lsoa_to: a.lsoa_to.max(a.lsoa_from),
            },
            a.weight,
        )
    }));
    for a in &areas.items {
        if a.outward.is_empty() || a.ods_prefix.len() != 3 {
            return Err(bug(format!(
                "reference.toml: area {} needs postcode districts and a 3-character ODS prefix",
                a.ods_prefix
            )));
        }
    }
    Ok(areas)
}

/// Text as Latin-1 bytes (invalid UTF-8 on purpose); characters beyond Latin-1 become `?`.
fn to_latin1(v: &[String]) -> Vec<Vec<u8>> {
    v.iter()
        .map(|s| {
            s.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect()
        })
        .collect()
}

impl Reference {
    /// Refuse (as a bug) reference data with an empty list the generator draws from.
    fn check_non_empty(&self) -> Result<(), GenerateError> {
        let reference = self;
        for (what, empty) in [
            ("sex", reference.sex.is_empty()),
            ("ethnicity", reference.ethnicity.is_empty()),
            ("age_band", reference.age_bands.is_empty()),
            ("area", reference.areas.is_empty()),
            ("snomed", reference.snomed.is_empty()),
            ("dmd", reference.dmd.is_empty()),
            ("names.female", reference.female.is_empty()),
            ("names.male", reference.male.is_empty()),
            ("names.surnames", reference.surnames.is_empty()),
            ("names.latin1", reference.latin1.is_empty()),
            ("latin1_text", reference.latin1_text.is_empty()),
            ("bad_dates", reference.rates.bad_dates.is_empty()),
            ("bad_numbers", reference.rates.bad_numbers.is_empty()),
        ] {
            if empty {
                return Err(bug(format!("reference.toml: {what} is empty")));
            }
        }
        Ok(())
    }
}

impl Reference {
    /// Load the compiled-in reference data and Type 1 codelist.
    pub(crate) fn builtin() -> Result<Self, GenerateError> {
        let raw: RawReference = toml::from_str(REFERENCE_TOML)
            .map_err(|e| bug(format!("generate/reference.toml is invalid: {e}")))?;
        let rates = raw.rates;
        check_rates(&rates)?;
        let age_bands = Weighted::new(raw.age_band.into_iter().map(|b| {
            let w = b.weight;
            (b, w)
        }));
        let total_w: u64 = age_bands.cumulative.last().copied().unwrap_or(0);
        let mean_activity = age_bands
            .items
            .iter()
            .map(|b| b.activity * b.weight as f64)
            .sum::<f64>()
            / total_w.max(1) as f64;
        let areas = areas(raw.area)?;
        let snomed = Weighted::new(raw.snomed.into_iter().map(|s| {
            let w = s.weight;
            (s, w)
        }));
        let dmd = Weighted::new(raw.dmd.into_iter().map(|d| {
            let w = d.weight;
            (d, w)
        }));
        if dmd.items.iter().any(|d| d.quantities.is_empty()) {
            return Err(bug(
                "reference.toml: every dm+d product needs quantities".into()
            ));
        }
        let names = raw.names;
        let latin1 = to_latin1(&names.latin1);
        let latin1_text = to_latin1(&rates.latin1_text);
        let surnames_upper = names.surnames.iter().map(|s| s.to_uppercase()).collect();
        let reference = Reference {
            sex: Weighted::new(raw.sex),
            ethnicity: Weighted::new(raw.ethnicity),
            age_bands,
            mean_activity,
            female: names.female,
            male: names.male,
            surnames: names.surnames,
            surnames_upper,
            latin1,
            latin1_text,
            areas,
            snomed,
            dmd,
            registrations: rates.registrations.clone(),
            past_status: raw.appointments.past_status,
            future_status: raw.appointments.future_status,
            mode: raw.appointments.mode,
            type1: parse_type1(TYPE1_CSV)?,
            rates,
        };
        reference.check_non_empty()?;
        Ok(reference)
    }
}

/// Parse the Type 1 codelist (`code,system,kind,term`).
fn parse_type1(text: &str) -> Result<Type1Codes, GenerateError> {
    let mut codes = Type1Codes::default();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(4, ',');
        let (Some(code), Some(system), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bug(format!(
                "type1-opt-out.csv line {}: expected code,system,kind,term",
                i + 1
            )));
        };
        let snomed = system.trim() == "snomedct";
        let list = match (kind.trim(), snomed) {
            ("dissent", true) => &mut codes.snomed_dissent,
            ("withdrawal", true) => &mut codes.snomed_withdrawal,
            ("dissent", false) => &mut codes.legacy_dissent,
            ("withdrawal", false) => &mut codes.legacy_withdrawal,
            _ => {
                return Err(bug(format!(
                    "type1-opt-out.csv line {}: kind must be dissent or withdrawal",
                    i + 1
                )));
            }
        };
        list.push(code.trim().to_string());
    }
    if codes.snomed_dissent.is_empty() || codes.snomed_withdrawal.is_empty() {
        return Err(bug(
            "type1-opt-out.csv needs SNOMED CT dissent and withdrawal codes".into(),
        ));
    }
    if codes.legacy_dissent.is_empty() {
        codes.legacy_dissent = codes.snomed_dissent.clone();
    }
    if codes.legacy_withdrawal.is_empty() {
        codes.legacy_withdrawal = codes.snomed_withdrawal.clone();
    }
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_reference_loads() {
        let r = Reference::builtin().map_err(|e| e.to_string());
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert!(r.snomed.items.len() >= 50, "about 50 SNOMED codes");
        assert!(r.dmd.items.len() >= 30, "about 30 dm+d codes");
        assert!((r.mean_activity - 1.0).abs() < 0.5);
        assert!(
            r.snomed
                .items
                .iter()
                .all(|s| s.code.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(r.dmd.items.iter().all(|d| (6..=18).contains(&d.code.len())));
        assert!(r.latin1.iter().all(|b| std::str::from_utf8(b).is_err()));
        assert!(
            r.latin1_text
                .iter()
                .all(|b| std::str::from_utf8(b).is_err())
        );
    }

    #[test]
    fn type1_codelist_is_split_by_kind_and_system() {
        let c = parse_type1(TYPE1_CSV).map_err(|e| e.to_string());
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.snomed_dissent, ["827241000000103"]);
        assert_eq!(c.snomed_withdrawal, ["827261000000102"]);
        assert!(c.legacy_dissent.contains(&"XaZ89".to_string()));
        assert!(c.legacy_withdrawal.contains(&"9Nu1.".to_string()));
    }

    #[test]
    fn bad_kind_is_a_bug_with_line() {
        let err = parse_type1("code,system,kind,term\nX,snomedct,maybe,t\n").map(|_| ());
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("line 2"), "{msg}");
    }
}
