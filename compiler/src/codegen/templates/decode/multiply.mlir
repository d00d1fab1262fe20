            %nw = arith.divui %klen, %cper : index
            %kcw = arith.divui %kc, %cper : index
            %in:{{n}} = scf.for %q = %lane to %nw step %c32 iter_args({{iters}}) -> ({{types}}) {
              %qp = arith.muli %q, %cper : index
{{weights}}
{{products}}
              scf.yield {{next}} : {{types}}
            }
            scf.yield {{sums}} : {{types}}
