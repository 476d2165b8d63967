"""`latentrt bench`: latentrt against the PyTorch reference and its peers, side by side (see harness.py).

Installed with the package, so the bench runs from a wheel: the harness, the roof, the plot, and one worker
script per system (systems/), each started in a process of its own. Nothing here imports torch when imported;
only the diffusers and peer workers do, in their own processes. The peers' virtual environments (optimum,
optimum-intel) are built from benchmarks/peers/, which only a source checkout has.
"""
