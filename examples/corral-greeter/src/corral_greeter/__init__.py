"""corral-greeter: an example third-party corral plugin distribution.

``corral_greeter.greeter`` is a plugin of a new type that needs the metadata store;
``corral_greeter.audit`` observes the kernel through a pluggy hook. Both are listed in this
distribution's ``corral.plugins`` entry points.
"""
