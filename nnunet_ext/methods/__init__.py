"""One package per method: its network, loss and plain logic. The trainers in nnunet_ext/trainers are thin and import
from here; U-Net pieces that several methods use live in unet.py."""
