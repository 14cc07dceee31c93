"""What one SuperSimpleNet training step costs on this machine (issue 12: why its ELPV cells do
not finish on 2 cores). One optimiser step of anomalib's SuperSimpleNet torch model, supervised,
on a batch of 16 at 128 px (the pretrained preset's size and batch) with a ResNet-50 module as
backbone: random weights here, the same arithmetic as the converted ImageNet ones. Parametrised
over the feature layers: the preset's [layer2, layer3] (1,536 channels into the head) and
[layer2] alone (512). Cost of a cell = steps/epoch x epochs x this (ELPV poly: 460 normals + 200
pairs = 42 batches per epoch, max_epochs 10)."""
from __future__ import annotations

import pytest
import torch

BATCH, SIZE = 16, 128


@pytest.mark.parametrize("layers", [["layer2", "layer3"], ["layer2"]], ids=["layer2+3", "layer2"])
def test_supersimplenet_train_step(benchmark, layers):
    import torchvision
    from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel

    torch.manual_seed(0)
    model = SupersimplenetModel(backbone=torchvision.models.resnet50(), layers=layers)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    masks = torch.zeros(BATCH, SIZE, SIZE)
    masks[BATCH // 2:, 40:80, 40:80] = 1                 # half the batch anomalous, as with pairs
    labels = (masks.flatten(1).amax(1) > 0).float()

    def step():
        amap, score, m, lab = model(x, masks, labels)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(amap, m) + \
            torch.nn.functional.binary_cross_entropy_with_logits(score, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    step()                                                # warm-up: allocator, first-call paths
    assert benchmark.pedantic(step, rounds=3, iterations=1) > 0
