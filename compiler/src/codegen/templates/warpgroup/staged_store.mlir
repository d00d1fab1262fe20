{{head}}
            %wfirst = arith.addi %r0, %rw0 : index
            %wany = arith.cmpi ult, %wfirst, %cnt : index
            scf.if %wany {
{{groups}}
            }
