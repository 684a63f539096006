//! `crdgen`: writes the CRDs defined in `operator/src/crd` as YAML into the Helm chart's
//! `crds/` folder (or another folder given as the only argument), one file per kind.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use offpeak_operator::crd;

/// Generates the offpeak CRD YAML from the Rust definitions.
#[derive(Debug, Parser)]
#[command(name = "crdgen", version, about)]
struct Args {
    /// Folder the CRD files are written to.
    #[arg(
        long,
        env = "OFFPEAK_CRD_DIR",
        default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/offpeak/crds")
    )]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, text) in crd::crd_files()? {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
