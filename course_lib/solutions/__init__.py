"""Reference solutions of the notebooks' exercises, one module per notebook
(``nb01.py``, ``nb02.py``, ...). Each module defines the solution functions and a
``CASES`` dict: exercise name -> list of argument tuples that ``course_lib.exercises.check``
tries. The tests verify every solution against an independent reference."""
