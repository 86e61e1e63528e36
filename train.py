"""Train with the shared trainer. ``python train.py`` is the CPU smoke run;
``python train.py experiment=gpt2_small optimizer=alphaadam`` is GPT-2 small on OpenWebText;
``trainer.preflight=true`` checks such a run in seconds without training. See docs/trainer.md."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    # Imported here, after Hydra's fast --help / --cfg paths.
    if cfg.trainer.get("preflight"):
        from alphaadam.preflight import main as preflight_main

        if preflight_main(cfg):
            raise SystemExit(1)
        return
    from alphaadam.trainer import main as train_main

    train_main(cfg)


if __name__ == "__main__":
    main()
