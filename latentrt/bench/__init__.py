"""`latentrt bench`: latentrt against the PyTorch reference and its peers, side by side (the method: run.py).

Installed with the package, so the bench runs from a wheel: the command (cli.py), the run (run.py) and its
parts (settings, exports, processes, peers, machine, report; harness.py gathers what callers import), the roof,
the plot, and one worker script per system (systems/), each started in a process of its own. Nothing here
imports torch when imported; only the diffusers and peer workers do, in their own processes. The peers' virtual
environments (optimum, optimum-intel) are built from benchmarks/peers/, which only a source checkout has.
"""
