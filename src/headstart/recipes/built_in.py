"""The built-in recipes, one maker each: head, multi-depth, views:K, partial:N, full, discriminative, gradual,
lp-ft, scratch, lora, prompt-tuning, prefix-tuning.

Each returns a fresh `Recipe` (headstart.recipes.schema); `headstart.recipes.strategy.get_recipe` turns a
`--strategy` value into a call of one of them.
"""

from __future__ import annotations

from headstart.recipes.schema import LoraSpec, Phase, PromptSpec, Recipe

# The names `--strategy` accepts (partial:N and lora:R take a number), as listed in errors and `recipes`.
BUILT_IN = (
    "head",
    "multi-depth",
    "views",
    "partial:N",
    "full",
    "discriminative",
    "gradual",
    "lp-ft",
    "scratch",
    "lora",
    "prompt-tuning",
    "prefix-tuning",
    "setfit",
)


def head(n_groups: int) -> Recipe:
    return Recipe(
        "head",
        (Phase("head", train_top=0, epochs=0, head_init="probe"),),
        description="frozen backbone + a new linear head, fitted on cached embeddings",
    )


def multi_depth(n_groups: int) -> Recipe:
    return Recipe(
        "multi-depth",
        (Phase("head", train_top=0, epochs=0, head_init="probe"),),
        pooled="all-depths",
        description="frozen backbone + a linear head on the pooled output of every layer group (Head2Toe), "
        "one forward pass",
    )


# Augmented views per training image of `views` (views:K asks for K). Not tuned: at 4, on emoji,
# fashion_mnist_20, digits and shift, views beat the probe beyond noise on no task (docs/augmented-views.md).
DEFAULT_VIEWS = 4


def views(k: int = DEFAULT_VIEWS) -> Recipe:
    return Recipe(
        "views" if k == DEFAULT_VIEWS else f"views:{k}",
        (Phase("head", train_top=0, epochs=0, head_init="probe"),),
        views=k,
        description=f"frozen backbone + the probe's head trained on each training image and {k} augmented "
        "views of it (embedded once, cached); predicts exactly as a probe",
    )


def partial(n: int) -> Recipe:
    return Recipe(
        f"partial:{n}",
        (Phase(f"top-{n}", train_top=n, epochs=8, head_init="probe"),),
        description=f"the top {n} layer groups and the head train; the rest stays frozen (BatchNorm in eval)",
    )


def full() -> Recipe:
    return Recipe(
        "full",
        (Phase("full", train_top="all", epochs=8, head_init="probe"),),
        description="every group trains",
    )


def discriminative() -> Recipe:
    return Recipe(
        "discriminative",
        (Phase("full", train_top="all", epochs=8, lr_decay=0.7, head_init="probe"),),
        description="every group trains, each group 0.7x the rate of the one above it",
    )


def gradual(n_groups: int) -> Recipe:
    steps = min(n_groups, 4)
    phases = [Phase("head", train_top=0, epochs=0, head_init="probe")]
    phases += [
        Phase(f"top-{k}", train_top=k, epochs=1, lr_decay=1 / 2.6, patience=None) for k in range(1, steps)
    ]
    phases.append(Phase("all", train_top="all", epochs=4, lr_decay=1 / 2.6))
    return Recipe(
        "gradual",
        tuple(phases),
        description="ULMFiT: unfreeze one more group per phase, from the top, with discriminative rates",
    )


def lp_ft() -> Recipe:
    return Recipe(
        "lp-ft",
        (
            Phase("linear-probe", train_top=0, epochs=0, head_init="probe"),
            Phase("fine-tune", train_top="all", epochs=8, lr=3e-4, backbone_lr_ratio=0.1),
        ),
        description="LP-FT (Kumar et al. 2022): fit the linear probe first, then fine-tune everything gently",
    )


def scratch() -> Recipe:
    return Recipe(
        "scratch",
        (
            Phase(
                "scratch",
                train_top="all",
                epochs=15,
                lr=3e-3,
                backbone_lr_ratio=1.0,
                patience=5,
                head_init="zeros",
                # Precise BatchNorm: after each epoch, the running statistics are recomputed over the
                # training set. From random init the weights move so fast that the running averages lag
                # them: without this, a scratch model at 0.95 train accuracy scored chance in eval mode.
                recalibrate_bn=True,
            ),
        ),
        pretrained=False,
        description="the same architecture from random init: the baseline that exposes negative transfer",
    )


def lora(r: int = 8) -> Recipe:
    # lr 1e-3 for adapters and head alike (backbone_lr_ratio 1): LoRA's B starts at zero and needs a rate
    # near the head's (PEFT's classification examples use 3e-4..5e-3; Hu et al. 2021 used 4e-4..5e-4 with
    # far more steps). alpha = 2r keeps the update's scale when the rank changes.
    return Recipe(
        "lora" if r == 8 else f"lora:{r}",
        (Phase("lora", train_top="all", epochs=8, lr=1e-3, backbone_lr_ratio=1.0, head_init="probe"),),
        adapter=LoraSpec(r=r, alpha=2.0 * r),
        description="LoRA adapters on the attention projections of every group + the probe-initialised "
        "head; the base weights stay frozen and only the adapter is stored",
    )


# Virtual tokens by default: Lester et al. 2021 saw prompt tuning gain little past 20 tokens; Li & Liang
# 2021 used prefixes of 10 for their classification-sized tasks (PEFT's examples: 20 and 10 too).
PROMPT_TOKENS = {"prompt-tuning": 20, "prefix-tuning": 10}


def learned_tokens(method: str, n: int | None = None) -> Recipe:
    """prompt-tuning(:N) and prefix-tuning(:N): only the learned vectors and the head train."""
    n = PROMPT_TOKENS[method] if n is None else n
    # The vectors learn at 10x the head's rate (1e-2): they start from real token activations, at the
    # scale of hidden states (norm ~ sqrt(width)), and need steps of that order to move within 8 epochs
    # (PEFT's classification examples use 1e-2..3e-2 for both; Lester et al. used 0.3 with Adafactor).
    return Recipe(
        method if n == PROMPT_TOKENS[method] else f"{method}:{n}",
        (Phase(method, train_top="all", epochs=8, lr=1e-3, backbone_lr_ratio=10.0, head_init="probe"),),
        adapter=PromptSpec(method, n_tokens=n),  # type: ignore[arg-type]
        description=(
            f"{n} learned vectors before the text's first layer"
            if method == "prompt-tuning"
            else f"{n} learned keys and values in every attention layer"
        )
        + " + the probe-initialised head; no backbone weight changes, only the vectors are stored "
        "(text backbones)",
    )


def setfit() -> Recipe:
    # SetFit's defaults (Tunstall et al. 2022): body rate 2e-5, batch 16. An epoch draws 2 pairs per item
    # (SetFit's iteration); SetFit runs 20 iterations on 8 items per class, 4 fit a CPU on a few hundred
    # items (docs/setfit.md). The head's own rate: it learns on detached embeddings alongside.
    return Recipe(
        "setfit",
        (
            # Started from the probe (its row is the reference, and kept if tuning never beats it on val).
            Phase(
                "contrastive",
                train_top="all",
                epochs=4,
                lr=1e-3,
                backbone_lr_ratio=0.02,
                patience=None,
                head_init="probe",
            ),
            Phase("probe", train_top=0, epochs=0, head_init="probe"),
        ),
        batch_size=16,
        objective="contrastive",
        description="SetFit (Tunstall et al. 2022): the sentence encoder tuned on balanced same/other-class "
        "pairs (cosine-similarity loss), then the probe's closed-form head on its embeddings; text only",
    )
