"""Commands as library calls: each job composes an engine (render, collect, spaces, a view) with the model
it resolves, the artifact it reads and writes, progress, resume and scale-out (`distributed`).

Engines compute and return records; jobs open files. So an engine never imports a job, and `collect
--circuits` is collect followed by the circuits view, composed here.
"""
