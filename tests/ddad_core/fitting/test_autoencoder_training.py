"""Training of the own ConvAutoencoder: the PSNR rises, the latent scale is measured afterwards, bad inputs are
refused."""

from __future__ import annotations

import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder, reconstruction_psnr
from ddad_core.fitting.autoencoder_training import fit_conv_autoencoder


def test_conv_autoencoder_fit_improves_psnr(capsys):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    images = torch.stack([torch.stack([xx * a, yy * b, (xx * yy) * a]) for a, b in ((1, 1), (0.5, -1), (-1, 0.3))])
    images = images.repeat(2, 1, 1, 1)
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    before = reconstruction_psnr(ae, images)
    psnr = fit_conv_autoencoder(ae, images, epochs=80, batch_size=6, lr=3e-3, progress=True)
    assert "PSNR" in capsys.readouterr().out
    assert psnr > before + 5
    # The latent scale was measured: scaled latents are about unit variance.
    assert abs(float(ae.encode(images).mean.std()) - 1) < 0.1
    assert ae.latent_scale != 1.0


@pytest.mark.parametrize(
    ("images", "crop_size", "match"),
    [
        (torch.zeros(0, 3, 32, 32), 16, "non-empty"),
        (torch.zeros(2, 1, 32, 32), 16, "non-empty"),
        (torch.zeros(2, 3, 32, 32), 12, "multiple of 8"),
        (torch.zeros(2, 3, 32, 32), 0, "multiple of 8"),
    ],
)
def test_bad_images_and_crop_sizes_are_refused(images, crop_size, match):
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit_conv_autoencoder(ae, images, epochs=1, crop_size=crop_size, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in ae.state_dict().items())  # refused before any training
