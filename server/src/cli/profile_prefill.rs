//! `metrum profile-prefill`: measures the minimum TTFT of prompts of 2^6..2^k tokens on a
//! running OpenAI-compatible server (`--url`, or `--serve "<serve args>"` to start this binary),
//! fits `prefill(P) = a + b·P + c·P²`, prints the fit error and writes the SLO file that
//! `metrum serve --slo-file` and `metrum bench --slo-file` read. The logic is
//! [`metrum_bench::profile_prefill`].

use metrum_bench::profile_prefill::{self, ProfilePrefillArgs as ProfileArgs};

#[derive(Debug, clap::Args)]
pub struct ProfilePrefillArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
}

impl ProfilePrefillArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let profile = runtime.block_on(profile_prefill::run_profile_prefill(&self.profile))?;
        println!("{}", profile_prefill::render(&profile));
        eprintln!("wrote {}", self.profile.out.display());
        Ok(())
    }
}
