//! `devicegrid certs`: the grid's CA and member certificates for peer TLS, as PEM files.
//!
//! `certs ca` makes a CA (`ca.crt`, `ca.key`); `certs member` issues `member-<id>.crt` and
//! `member-<id>.key` from it. A member given the CA key (`--peer-ca-key`) issues its own
//! certificate instead; `devicegrid dev` does that.

use std::path::{Path, PathBuf};

use anyhow::Context;
use devicegrid_pki::Pem;

/// Flags of `devicegrid certs`.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    action: CertsAction,
}

#[derive(clap::Subcommand, Debug)]
enum CertsAction {
    /// Make a CA for one grid: DIR/ca.crt and DIR/ca.key (refuses to overwrite).
    Ca {
        /// The grid's name (its members' --cluster-name).
        #[arg(long, default_value = "devicegrid")]
        cluster: String,
        /// Where to write.
        #[arg(long)]
        out: PathBuf,
        /// Validity, days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue DIR/member-ID.crt and .key, signed by the CA in --ca-dir.
    Member {
        /// The grid's name.
        #[arg(long, default_value = "devicegrid")]
        cluster: String,
        /// The member id the certificate names.
        #[arg(long)]
        id: u64,
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write.
        #[arg(long)]
        out: PathBuf,
        /// DNS names or IP addresses of the member (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Runs `devicegrid certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.action {
        CertsAction::Ca { cluster, out, days } => {
            let ca = devicegrid_pki::new_ca(&cluster, devicegrid_pki::days(days))?;
            write_pair(&out, "ca", &ca)?;
            println!("{}", out.join("ca.crt").display());
        }
        CertsAction::Member {
            cluster,
            id,
            ca_dir,
            out,
            hosts,
            days,
        } => {
            if id == 0 {
                anyhow::bail!("--id must be greater than 0");
            }
            let ca = read_ca(&ca_dir)?;
            let pem = devicegrid_pki::issue_member(
                &ca,
                &cluster,
                id,
                &hosts,
                devicegrid_pki::days(days),
            )?;
            write_pair(&out, &format!("member-{id}"), &pem)?;
            println!("{}", out.join(format!("member-{id}.crt")).display());
        }
    }
    Ok(())
}

/// Reads `dir/ca.crt` and `dir/ca.key`.
pub fn read_ca(dir: &Path) -> anyhow::Result<Pem> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading {}", dir.join(f).display()))
    };
    Ok(Pem {
        cert: read("ca.crt")?,
        key: read("ca.key")?,
    })
}

/// Writes `dir/<name>.crt` and `dir/<name>.key` (the key readable by its owner only);
/// refuses to overwrite either.
pub fn write_pair(dir: &Path, name: &str, pem: &Pem) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text, mode) in [
        (format!("{name}.crt"), &pem.cert, 0o644),
        (format!("{name}.key"), &pem.key, 0o600),
    ] {
        let path = dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
