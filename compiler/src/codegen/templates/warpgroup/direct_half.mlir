            %{{r}}c = arith.constant {{row}} : index
            %{{r}}row0 = arith.addi %rw, %{{r}}c : index
            %{{r}}row = arith.addi %r0, %{{r}}row0 : index
            %{{r}}in0 = arith.cmpi ult, %{{r}}row, %cnt : index
{{never}}
            scf.if %{{r}}{{cond}} {
{{output_row}}
              %{{r}}base = arith.muli %{{r}}s, %cW : index
{{pairs}}
            }
