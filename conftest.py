"""Test-session settings shared by the tests and the library's doctests."""

import torch

# The tests use tiny models, for which thread start-up costs more than it
# saves; one thread also keeps the suite steady on a loaded 2-core machine.
torch.set_num_threads(1)
