"""One training run of each loop (fine-tuning, autoencoder, denoiser) on the tiny profile, for
test_distributed.py: under `torchrun --nproc_per_node 2` or as one process; rank 0 saves the weights.

    python tests/ddp_worker.py OUT_FOLDER GLOBAL_BATCH [GLOBAL_BATCH ...]   # OUT_FOLDER/batch<N>.safetensors

Several batches train one after another in one process (one start-up), each from the same seeds.

Dropout and the autoencoder's noise are off: each rank would draw them for its own share. The networks are
saved as what they compute on fixed inputs: a conv bias before an instance norm has no true gradient, and
Adam turns the float noise in its gradient into steps of full size, different in every run."""
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from condpdiff.autoencoder import Autoencoder, autoencoder_spec, train_autoencoder
from condpdiff.config import load_params
from condpdiff.denoiser import Denoiser, denoiser_spec
from condpdiff.diffusion import make_scheduler, train_diffusion
from condpdiff.distributed import world
from condpdiff.evaluation import task_scorer
from condpdiff.finetune import finetune_and_collect
from condpdiff.glue import TASK_SPECS, read_tsv

REPO = Path(__file__).resolve().parents[1]


def main(out: Path, batch: int) -> None:
    torch.set_num_threads(1)
    params = load_params(REPO / "profiles" / "tiny.yaml")
    draws = torch.Generator().manual_seed(1)  # the data, drawn before any training consumes torch's own stream
    data, probe = torch.randn(16, 600, generator=draws), torch.randn(4, 600, generator=draws)
    latents, x = torch.randn(16, 2, 40, generator=draws), torch.randn(4, 2, 40, generator=draws)
    bank = torch.nn.functional.normalize(torch.randn(2, 3, 384, generator=draws), dim=-1)
    train = read_tsv(REPO / "data" / "glue" / "SST-2" / "train.tsv", TASK_SPECS["sst2"])[:64]
    scorer = task_scorer(params.base, params.lora, "sst2", 8, params.seed)
    for module in scorer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    collect = replace(params.collect, steps=6, batch_size=batch, keep_last=1, warmup_steps=0)
    kept, _ = finetune_and_collect(scorer.model, scorer.tokenizer, "sst2", train, collect, scorer.layout,
                                   params.base.max_length, params.seed)

    ae_cfg = replace(params.autoencoder, steps=6, batch_size=batch, input_noise=0.0, latent_noise=0.0)
    torch.manual_seed(params.seed)
    autoencoder = train_autoencoder(Autoencoder(autoencoder_spec(ae_cfg, data.shape[1])), data, ae_cfg, params.seed)

    diffusion_cfg = replace(params.diffusion, steps=6, batch_size=batch, ema_decay=0.0)
    torch.manual_seed(params.seed)
    denoiser = train_diffusion(Denoiser(denoiser_spec(diffusion_cfg, 2, 384, False)),
                               make_scheduler(diffusion_cfg.timesteps, diffusion_cfg.beta_schedule, diffusion_cfg.prediction),
                               latents,
                               torch.tensor([0, 1] * 8), bank, diffusion_cfg, params.seed)
    if world().is_main:
        with torch.inference_mode():
            save_file({"lora": kept[-1].contiguous(), "autoencoder": autoencoder.decode(autoencoder.encode(probe)),
                       "denoiser": denoiser(x, torch.tensor([0, 10, 25, 49]), bank[:, 0].repeat(2, 1))}, str(out))


if __name__ == "__main__":
    for size in sys.argv[2:]:
        main(Path(sys.argv[1]) / f"batch{size}.safetensors", int(size))
