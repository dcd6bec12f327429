"""The study files shipped with cvstudy (package data: ``cvstudy sweep --model NAME`` reads NAME.yaml).

A ``studies/`` folder in the working directory holding NAME.yaml wins over the shipped file.
"""
