            %li{{i}}k = arith.constant {{row}} : index
            %li{{i}}w = arith.addi %wrow, %li{{i}}k : index
            %li{{i}}r0 = arith.addi %rw0, %li{{i}}w : index
            %li{{i}}r = arith.addi %r0, %li{{i}}r0 : index
            {{exists}} = arith.cmpi ult, %li{{i}}r, %cnt : index
{{never}}
            %lg{{i}} = scf.if %li{{i}} -> (index) {
{{output_row}}
              %li{{i}}e0 = arith.muli %li{{i}}s, %cW : index
              %li{{i}}e = arith.addi %li{{i}}e0, %wcol : index
              %li{{i}}b = arith.muli %li{{i}}e, %c2 : index
              %li{{i}}a = arith.addi %dstx, %li{{i}}b : index
              scf.yield %li{{i}}a : index
            } else {
              scf.yield %c0 : index
            }
            %li{{i}}xb = arith.muli %wword, %c16 : index
            %li{{i}}rb = arith.muli %li{{i}}w, %cRS : index
            %ls{{i}}0 = arith.addi %stw, %li{{i}}rb : index
            %ls{{i}} = arith.addi %ls{{i}}0, %li{{i}}xb : index
